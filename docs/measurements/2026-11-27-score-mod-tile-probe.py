"""Probe: which wgmma tile serves softcap and ALiBi best (twentieth session). The forward picks the plain lead for
both (head dim 64: 192x128 with a producer warpgroup and bulk copies, three consumer warpgroups taking turns; 128:
128x128 with two consumers that overlap softmax and products). Softcap doubles the softmax's MUFU work and ran
0.58-0.73x plain at 64 and 0.69-0.80x at 128 on those tiles (bar 0.9); a tile whose consumers overlap their own
softmax with their products (the "o" tiles) might hide more of it. Times every wgmma candidate of the variant,
forced (config=), against plain on the lead, bf16, 16k tokens.
Measured (one H100, `2026-11-27-h100-s20-score-mod-tile-probe.md`): softcap gains on no tile (at 64 the lead
0.65-0.73, the others 0.44-0.73 but 128x128 without a producer at 2k causal, 0.78, and 0.44-0.64 in its other
cells; at 128 the lead 0.73-0.80, the others 0.47-0.75); ALiBi's best tile changes from cell to cell, up to 0.09
above the lead (the lead 0.86-0.89 at 64, 0.72-0.93 at 128).
From the checkout root: python docs/measurements/2026-11-27-score-mod-tile-probe.py"""
import os
import sys

SHAPES = ((64, 2048), (64, 8192), (128, 2048), (128, 8192))
SOFTCAP = 30.0


def kinds():
    from cupyflash.problem import Variant

    for mask in ("none", "band"):
        yield "softcap", Variant("bfloat16", mask, softcap=True)
        yield "ALiBi", Variant("bfloat16", mask, alibi=True)


def tiles(d, variant):
    from cupyflash._nvrtc import BIG_GPU
    from cupyflash.configs import candidates

    return [c for c in candidates("fwd", BIG_GPU, d, variant)
            if c.family == "wgmma_sm90" and not c.persistent and c.block_m >= 128]


def work():
    return [("fwd", d, c, v) for d in sorted({d for d, _ in SHAPES}) for _, v in kinds() for c in tiles(d, v)]


def main():
    import cupyflash as cf
    from cupyflash.bench import time_fn

    for d, s, q, k, v, slopes in inputs(SHAPES):
        for name, variant in kinds():
            causal = variant.mask == "band"
            kw = dict(softcap=SOFTCAP) if name == "softcap" else dict(alibi_slopes=slopes)
            plain = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal))
            line = f"d{d} S={s:5d} causal={causal!s:5} {name:7s} plain {plain * 1e3:7.1f} us:"
            for c in tiles(d, variant):
                t = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, config=c, **kw))
                line += f"  {c.block_m}x{c.block_n}{str(c).split('/p4')[1] if '/p4' in str(c) else ''} {plain / t:.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from forced_probe import cli, inputs

    cli(work, main)

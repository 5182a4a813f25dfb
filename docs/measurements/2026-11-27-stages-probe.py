"""Probe: deeper K/V rings on the forward leads (twentieth session). The head-dim-64 lead (192x128, a producer
warpgroup and three consumer warpgroups, bulk copies) runs softcap at 0.58-0.73x plain although softcap only adds
MUFU work, and its time per tile is about the sum of the tensor cores' and the MUFU units' time, as if the three
consumers did their softmax at the same time: each waits for the same key tile of a two-stage ring. With three or
four stages a consumer may run a tile ahead of the others, and one's softmax overlap another's products. Expected:
if the consumers move in step because of the ring, softcap and plain gain with stages (softcap more); if not,
nothing moves. Forces the lead with 2, 3, 4 stages (4 does not fit at head dim 128) for plain, softcap and ALiBi
(the configs are not table entries: the probe skips check_config), bf16, 16k tokens.
Measured (one H100, `2026-11-27-h100-s20-stages-probe.md`, two rounds): nothing moves beyond the rounds' spread
(plain / the lead itself 0.92-1.03 between rounds): softcap 0.64-0.77 at 2, 3 and 4 stages alike, ALiBi 0.82-0.94
(64), 0.74-1.02 (128); the consumers do not wait on the ring.
From the checkout root: python docs/measurements/2026-11-27-stages-probe.py [--compile]"""
import dataclasses
import os
import sys

SHAPES = ((64, 2048), (64, 8192), (128, 2048), (128, 8192))
STAGES = {64: (2, 3, 4), 128: (2, 3)}
SOFTCAP = 30.0


def variants():
    from cupyflash.problem import Variant

    for mask in ("none", "band"):
        for name, kw in (("plain", {}), ("softcap", dict(softcap=True)), ("ALiBi", dict(alibi=True))):
            yield name, Variant("bfloat16", mask, **kw)


def configs(d, variant):
    from cupyflash._nvrtc import BIG_GPU
    from cupyflash.configs import select_config

    lead = select_config("fwd", BIG_GPU, d, variant=variant)
    return [dataclasses.replace(lead, stages=s) for s in STAGES[d]]


def work():
    return [("fwd", d, c, v) for d in STAGES for _, v in variants() for c in configs(d, v)]


def main():
    import cupyflash as cf
    from cupyflash import forward
    from cupyflash.bench import time_fn

    forward.check_config = lambda *args, **kw: None  # the probe's configs are not table entries
    for rnd in (1, 2):
        for d, s, q, k, v, slopes in inputs(SHAPES):
            for causal in (False, True):
                plain = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal))
                line = f"round {rnd} d{d} S={s:5d} causal={causal!s:5} plain lead {plain * 1e3:7.1f} us, / plain:"
                for name, variant in variants():
                    if (variant.mask == "band") != causal:
                        continue
                    kw = {"plain": {}, "softcap": dict(softcap=SOFTCAP), "ALiBi": dict(alibi_slopes=slopes)}[name]
                    for c in configs(d, variant):
                        t = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, config=c, **kw))
                        line += f" {name} s{c.stages} {plain / t:.3f}"
                print(line, flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from forced_probe import cli, inputs

    cli(work, main)

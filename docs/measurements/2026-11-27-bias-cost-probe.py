"""Probe: where a 16-bit bias's forward cost goes on the bulk-copy producer tiles (nineteenth session). At 16k tokens,
bf16, the forward with a key bias (B, 1, 1, S) ran 0.74-0.81x the plain forward at head dim 64 and 0.77-0.81x at 128,
a pair bias (1, H, S, S) 0.64-0.79 and 0.74-0.79 (bar 0.8), on the same tiles as plain. Each experiment runs in its
own process with the kernel source edited before compiling (timing only: the edits compute wrong results):
base (the tree: a key bias widens each value once for a warp's rows, add_bias_row_x4); oldkey (a key bias read
as the pair bias is, once per row: the eighteenth session's code); noadd (the consumers skip the bias: its copies
stay); nocopy (the producer copies no bias: the consumers add whatever the stage holds).
Expected: noadd near plain if the bias is ALU-bound (64) and the copies hide; nocopy near base if the copies hide;
base faster than oldkey for the key bias by a quarter of its cost (half the conversions), the pair bias unchanged.
From the checkout root: python docs/measurements/2026-11-27-bias-cost-probe.py"""
import os
import sys

EXPERIMENTS = ("base", "oldkey", "noadd", "nocopy")
SHAPES = ((64, 2048), (64, 8192), (128, 2048), (128, 8192))


def patched(text, exp):
    if "struct SwizzledBias" not in text:
        return text
    if exp == "oldkey":
        old = "} else if (!by_query) {"
        assert old in text
        text = text.replace(old, "} else if (false) {")
        old = "byte_offset<ROWS_OF_TILE>(row0 + row, (col0 + col) * BYTES)"
        assert old in text
        text = text.replace(old, "byte_offset<ROWS_OF_TILE>(by_query ? row0 + row : 0, (col0 + col) * BYTES)")
    if exp == "noadd":
        old = "if (MASK && !(entry & 1)) return;  // the mask shows the whole tile\n        const float unit"
        assert old in text
        text = text.replace(old, "if (!MASK) return;\n        const float unit")
    if exp == "nocopy":
        for old in ("if ((MASK && !(entry & 1)) || Fields::key_step(p) == 0) return 0u;",
                    "if ((MASK && !(entry & 1)) || Fields::key_step(p) == 0) return;"):
            assert old in text
            text = text.replace(old, old.replace("(MASK && !(entry & 1))", "!MASK"))
    return text


def child(exp, timing):
    import cupy

    import cupyflash as cf
    from cupyflash.bench import HIDDEN, TOKENS, make_inputs, time_fn

    for d, s in SHAPES:
        batch, nheads = TOKENS // s, HIDDEN // d
        q, k, v = make_inputs(batch, s, nheads, d, "bfloat16")
        biases = {kind: cupy.random.standard_normal(shape, dtype=cupy.float32).astype(q.dtype)
                  for kind, shape in (("pair", (1, nheads, s, s)), ("key", (batch, 1, 1, s)))}
        if not timing:
            for bias in biases.values():
                cf.flash_attn_func(q, k, v, bias=bias)
            continue
        plain = time_fn(lambda: cf.flash_attn_func(q, k, v))
        line = f"{exp:7s} d{d} S={s}: plain {plain * 1e3:7.1f} us"
        for kind, bias in biases.items():
            t = time_fn(lambda: cf.flash_attn_func(q, k, v, bias=bias))
            line += f", {kind} {t * 1e3:7.1f} us ({plain / t:.3f}x plain)"
        print(line, flush=True)
        del biases


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from source_probe import run

    run(__file__, EXPERIMENTS, patched, child)

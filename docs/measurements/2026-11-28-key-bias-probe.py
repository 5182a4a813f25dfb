"""Probe: why a key bias's copies cost more than a pair bias's at 8k (nineteenth session's
bias-cost probe, `noadd`: the consumers skip the add, the copies stay: key bias 0.80-0.91x plain at 8k against the
pair bias's 0.88-0.91x, though a key bias copies one row of 256 bytes a tile and the pair bias 48 KB). Hypothesis:
every block of a batch copies the same 256 bytes of L2 at about the same time (the blocks walk the key tiles in
step), and the copies queue at one L2 slice. Experiments (kernel source edited before compiling; timing only):
base (the tree); oldadd (the key row's adds as `s += b * unit`, before the wip patch's fmaf: for an fp16 key bias
ptxas then shares an FMUL and adds with FADD); noadd (as the bias-cost probe); spread (noadd, and each block copies
its key row from one of 8 key offsets chosen by its query tile: the same bytes a block, spread over 8 places);
nocopy (neither copy nor add).
Run it on the tree with the wip patch applied (oldadd edits the patch's lines). Each experiment times a bf16 and an
fp16 key bias (bf16 inputs). Expected: oldadd's fp16 key bias 3-6% behind base's, its bf16 one level with base's.
Expected if the hypothesis holds: spread within 3% of nocopy at 8k, noadd 10-20% behind them; if spread stays
with noadd, the cost is in the copy's issue or its barrier, not in L2.
Measured (twentieth session, GPU 1 of a 4-H100 host beside other runs, three rounds;
`2026-11-27-h100-s20-key-bias-probe.md`): the fmaf as expected at 2k (fp16 key bias at 64 0.88-0.90 against oldadd's
0.85; bf16 unchanged), within the rounds' spread at 8k; the hypothesis fails: spread is no faster than noadd
(64, 8k: 0.89-0.96 against 0.93-0.95), and nocopy, with neither copy nor add, still runs 0.90-0.99x plain at 8k: the
key bias's 8k cost is not its copies' L2 traffic.
From the checkout root: python docs/measurements/2026-11-28-key-bias-probe.py"""
import importlib.util
import os
import sys

MEASUREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "measurements")
EXPERIMENTS = ("base", "oldadd", "noadd", "spread", "nocopy")
SHAPES = ((64, 2048), (64, 8192), (128, 8192))


def _bias_cost_probe():
    """The nineteenth session's bias-cost probe, whose noadd and nocopy edits these are."""
    spec = importlib.util.spec_from_file_location("bias_cost_probe",
                                                  os.path.join(MEASUREMENTS, "2026-11-27-bias-cost-probe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patched(text, exp):
    if "struct SwizzledBias" not in text:
        return text
    if exp == "oldadd":
        for half in ("x", "y"):
            i = "2 * r" if half == "x" else "2 * r + 1"
            old = f"s[mt][nt + i][{i}] = fmaf(b.{half}, unit, s[mt][nt + i][{i}]);"
            assert old in text
            text = text.replace(old, f"s[mt][nt + i][{i}] += b.{half} * unit;")
    if exp in ("noadd", "spread", "nocopy"):
        text = _bias_cost_probe().patched(text, "noadd")
    if exp == "spread":
        old = "tma_load_4d(dst + HEADER + panel * ROWS * 128, map, k0 + panel * PANEL_COLS,"
        assert old in text
        text = text.replace(old, "tma_load_4d(dst + HEADER + panel * ROWS * 128, map, (str.seq != 0 ? k0 : (k0 + 128 * "
                                 "static_cast<int>(blockIdx.y % 8)) % p.seqlen_k) + panel * PANEL_COLS,")
    if exp == "nocopy":
        text = _bias_cost_probe().patched(text, "nocopy")
    return text


def child(exp, timing):
    import cupy

    import cupyflash as cf
    from cupyflash.bench import HIDDEN, TOKENS, make_inputs, time_fn

    for d, s in SHAPES:
        batch, nheads = TOKENS // s, HIDDEN // d
        q, k, v = make_inputs(batch, s, nheads, d, "bfloat16")
        key = cupy.random.standard_normal((batch, 1, 1, s), dtype=cupy.float32)
        keys = {"bf16": key.astype(q.dtype), "fp16": key.astype(cupy.float16)}
        if not timing:
            for b in keys.values():
                cf.flash_attn_func(q, k, v, bias=b)
            continue
        plain = time_fn(lambda: cf.flash_attn_func(q, k, v))
        line = f"{exp:7s} d{d} S={s}: plain {plain * 1e3:7.1f} us"
        for name, b in keys.items():
            t = time_fn(lambda: cf.flash_attn_func(q, k, v, bias=b))
            line += f", {name} key {t * 1e3:7.1f} us ({plain / t:.3f}x plain)"
        print(line, flush=True)


if __name__ == "__main__":
    sys.path.insert(0, MEASUREMENTS)
    from source_probe import run

    run(__file__, EXPERIMENTS, patched, child, rounds=3)  # the 8k cells moved 12% between two rounds

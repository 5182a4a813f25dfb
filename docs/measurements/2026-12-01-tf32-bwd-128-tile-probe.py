"""tf32 dK/dV at head dim 128: wgmma_tf32 32x64/w4 against 32x128/w8 (forced), interleaved rounds, median.

Run on an H100: python docs/measurements/2026-12-01-tf32-bwd-128-tile-probe.py"""
import cupy
import numpy as np

import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _bt

cands = [_bt(32, 64, 4), _bt(32, 128, 8)]
key = ("wgmma_tf32", 128)
configs.TABLES["bwd"][key] = tuple(dict.fromkeys(tuple(configs.TABLES["bwd"][key]) + tuple(cands)))
d = 128
for s in (1024, 2048, 4096):
    b, h = 16384 // s, 2048 // d
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, precision="tf32", return_lse=True)
    flops = 2.5 * 4 * b * h * s * s * d
    times = {i: [] for i in range(len(cands))}
    for c in cands:
        cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=c, atomic_dq=True)
    ev = [cupy.cuda.Event() for _ in range(2)]
    for _ in range(7):
        for i, c in enumerate(cands):
            ev[0].record()
            for _ in range(3):
                cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=c, atomic_dq=True)
            ev[1].record(); ev[1].synchronize()
            times[i].append(cupy.cuda.get_elapsed_time(*ev) / 3)
    ref = cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=cands[0], atomic_dq=True)
    base = float(np.median(times[0]))
    for i, c in enumerate(cands):
        got = cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=c, atomic_dq=True)
        diff = max(float(cupy.abs(a - r).max()) for a, r in zip(got, ref))
        ms = float(np.median(times[i]))
        print(f"| {d} | {s} | {c} | {ms:.3f} ms | {flops / ms / 1e9:.1f} TFLOP/s | {base / ms:.2f}x | "
              f"max diff from the first {diff:.1e} |", flush=True)

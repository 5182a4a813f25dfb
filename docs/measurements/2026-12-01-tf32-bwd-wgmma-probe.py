"""tf32 dK/dV: mma_tf32's 32x64/w4/d2 against wgmma_tf32 tiles (forced configs), interleaved rounds, median.

Run on an H100: python docs/measurements/2026-12-01-tf32-bwd-wgmma-probe.py [head dims, e.g. 64,128]"""
import sys
import cupy
import numpy as np

import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _t, _bt

dims = [int(x) for x in sys.argv[1].split(",")] if len(sys.argv) > 1 else [64, 128]
cands = {64: [_t(32, 64, 4, d_split=2), _bt(32, 64, 4), _bt(64, 64, 4)],
         128: [_t(32, 64, 4, d_split=2), _bt(32, 64, 4)]}
for kd, cs in cands.items():  # a forced config must be a table entry
    key = ("wgmma_tf32", kd)
    configs.TABLES["bwd"][key] = tuple(dict.fromkeys(tuple(configs.TABLES["bwd"][key]) + tuple(cs[1:])))
for d, s in [(d, s) for d in dims for s in (1024, 2048, 4096)]:
    b, h = 16384 // s, 2048 // d
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, precision="tf32", return_lse=True)
    flops = 2.5 * 4 * b * h * s * s * d
    times = {i: [] for i in range(len(cands[d]))}
    ok = {}
    for i, c in enumerate(cands[d]):
        try:
            cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=c, atomic_dq=True)
            ok[i] = True
        except Exception as e:
            print(f"d{d} s{s} {c}: {type(e).__name__}: {str(e)[:300]}", flush=True)
    ev = [cupy.cuda.Event() for _ in range(2)]
    for _ in range(7):
        for i in ok:
            ev[0].record()
            for _ in range(3):
                cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=cands[d][i], atomic_dq=True)
            ev[1].record(); ev[1].synchronize()
            times[i].append(cupy.cuda.get_elapsed_time(*ev) / 3)
    ref = cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=cands[d][0], atomic_dq=True)
    base = float(np.median(times[0])) if 0 in ok else float("nan")
    for i in ok:
        c = cands[d][i]
        got = cf.flash_attn_backward(do, q, k, v, out, lse, precision="tf32", config=c, atomic_dq=True)
        diff = max(float(cupy.abs(a - r).max()) for a, r in zip(got, ref))
        ms = float(np.median(times[i]))
        print(f"| {d} | {s} | {c} | {ms:.3f} ms | {flops / ms / 1e9:.1f} TFLOP/s | {base / ms:.2f}x | "
              f"max diff from the first {diff:.1e} |", flush=True)

"""float32 "highest" dK/dV at head dim 128: wgmma_tf32 16x64 with 4 warps against 16x64 with 8 (a helper warpgroup
adds the step before's dQ on wgmma and splits the next step's Q and dO, while warpgroup 1 runs the products; P^T and
dS^T in the 64-byte swizzle), both forced, interleaved rounds, median, non-causal; then each one's errors against
float64 on both dQ paths. Predicted (twenty-sixth session): 1.2-1.5x. Ran in the twenty-seventh session
(2026-11-27-h100-s27-helper-128-probe.md; with the argument "causal", causal problems too, once the helper kernel
served the band mask: 2026-11-27-h100-s27-helper-128-band.md). From the checkout root: python
docs/measurements/2026-11-27-highest-helper-128-probe.py [causal]"""
import sys

import cupy
import numpy as np

import cupyflash as cf
from cupyflash.configs import _bt
from cupyflash.reference import attention_backward_reference

D, P = 128, "highest"
cands = [_bt(16, 64, 4), _bt(16, 64, 8)]
print("| D | seqlen | causal | tile | bwd ms | TFLOP/s | speed / first |")
print("|---|---|---|---|---|---|---|")
for s in (1024, 2048, 4096, 8192):
    for causal in (False, True) if "causal" in sys.argv[1:] else (False,):
        b, h = 16384 // s, 2048 // D
        rng = cupy.random.default_rng(0)
        q, k, v, do = (rng.standard_normal((b, s, h, D), dtype=cupy.float32) for _ in range(4))
        out, lse = cf.flash_attn_func(q, k, v, causal=causal, precision=P, return_lse=True)
        flops = 2.5 * 4 * b * h * s * s * D / (2 if causal else 1)
        times = {i: [] for i in range(len(cands))}
        for c in cands:
            cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision=P, config=c, atomic_dq=True)
        ev = [cupy.cuda.Event() for _ in range(2)]
        for _ in range(5):
            for i, c in enumerate(cands):
                ev[0].record()
                for _ in range(2):
                    cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision=P, config=c,
                                           atomic_dq=True)
                ev[1].record()
                ev[1].synchronize()
                times[i].append(cupy.cuda.get_elapsed_time(*ev) / 2)
        base = float(np.median(times[0]))
        for i, c in enumerate(cands):
            ms = float(np.median(times[i]))
            print(f"| {D} | {s} | {causal} | {c} | {ms:.3f} | {flops / ms / 1e9:.1f} | {base / ms:.2f}x |", flush=True)
        del q, k, v, do, out, lse
        cupy.get_default_memory_pool().free_all_blocks()
print()
print("errors: max |x - float64| (dq, dk, dv), batch 1, 2 heads, standard normal inputs")
for s in (1024, 4096):
    rng = cupy.random.default_rng(1)
    q, k, v, do = (rng.standard_normal((1, s, 2, D), dtype=cupy.float32) for _ in range(4))
    ref = attention_backward_reference(*(x.astype(cupy.float64) for x in (do, q, k, v)))
    out, lse = cf.flash_attn_func(q, k, v, precision=P, return_lse=True)
    row = []
    for c in cands:
        for atomic in (True, False):
            got = cf.flash_attn_backward(do, q, k, v, out, lse, precision=P, config=c, atomic_dq=atomic)
            row.append(f"{c.warps} warps {'atomic' if atomic else 'det'} "
                       + " ".join(f"{float(cupy.abs(a - r).max()):.2e}" for a, r in zip(got, ref)))
    print(f"- S={s}: " + " | ".join(row), flush=True)

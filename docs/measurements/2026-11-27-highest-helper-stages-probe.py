"""float32 "highest" dK/dV at head dim 64 with a helper warpgroup: two Q/dO stages (the pick) against three (215 KB;
the helper then waits for copies issued a step earlier instead of the ones it just issued), forced, interleaved
rounds, median (twenty-fifth session). Expected: +0-3% (the helper's dQ already covers most of its copies' latency).
From the checkout root: python docs/measurements/2026-11-27-highest-helper-stages-probe.py"""
import cupy
import numpy as np

import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _bt

D, P = 64, "highest"
cands = [_bt(32, 64, 8), _bt(32, 64, 8, stages=3)]
key = ("wgmma_tf32", D)
configs.TABLES["bwd"][key] = tuple(configs.TABLES["bwd"][key]) + (cands[1],)  # a forced tile must be an entry
print("| D | seqlen | causal | tile | bwd ms | TFLOP/s | speed / first |")
print("|---|---|---|---|---|---|---|")
for s, causal in ((1024, False), (1024, True), (4096, False), (8192, False)):
    b, h = 16384 // s, 2048 // D
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, D), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, precision=P, return_lse=True)
    flops = 2.5 * 4 * b * h * s * s * D / (2 if causal else 1)
    grads = [cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision=P, config=c, atomic_dq=False)
             for c in cands]
    same = all(bool((x == y).all()) for x, y in zip(*grads))  # deterministic dQ: the same sums in the same order
    times = {i: [] for i in range(len(cands))}
    ev = [cupy.cuda.Event() for _ in range(2)]
    for _ in range(5):
        for i, c in enumerate(cands):
            ev[0].record()
            for _ in range(2):
                cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision=P, config=c, atomic_dq=True)
            ev[1].record()
            ev[1].synchronize()
            times[i].append(cupy.cuda.get_elapsed_time(*ev) / 2)
    base = float(np.median(times[0]))
    for i, c in enumerate(cands):
        ms = float(np.median(times[i]))
        print(f"| {D} | {s} | {causal} | {c} | {ms:.3f} | {flops / ms / 1e9:.1f} | {base / ms:.2f}x |"
              + (f" (deterministic gradients bit-identical: {same})" if i else ""), flush=True)
    del q, k, v, do, out, lse, grads
    cupy.get_default_memory_pool().free_all_blocks()

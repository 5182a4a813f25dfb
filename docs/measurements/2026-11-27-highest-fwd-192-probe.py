"""float32 "highest" forward at head dim 64 on three consumer warpgroups (twenty-fifth session): wgmma_tf32 192x32 (a
producer warpgroup copying by cp.async and splitting what it copied, three consumers; 165 KB, no spills) against the
pick, 128x64 (two consumers, 198 KB), forced, interleaved rounds, median. 192x64 does not fit registers (76-196 bytes
of spill at 128 a thread). Expected: within +-10% (K and V copied and split once for 192 rows instead of 128, against
twice the key tiles, each with its barriers and row maxima); the forward is 20% of "highest"'s forward + backward at
head dim 64, where 2x SDPA needs 1.5-7.5% more. From the checkout root:
python docs/measurements/2026-11-27-highest-fwd-192-probe.py"""
import cupy
import numpy as np

import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _wh

D, P = 64, "highest"
cands = [_wh(128, 64), _wh(192, 32)]
key = ("wgmma_tf32", D)
configs.TABLES["fwd"][key] = tuple(configs.TABLES["fwd"][key]) + (cands[1],)  # a forced tile must be an entry
print("| D | seqlen | causal | tile | fwd ms | TFLOP/s | speed / first |")
print("|---|---|---|---|---|---|---|")
for s in (1024, 2048, 4096, 8192):
    for causal in (False, True):
        b, h = 16384 // s, 2048 // D
        rng = cupy.random.default_rng(0)
        q, k, v = (rng.standard_normal((b, s, h, D), dtype=cupy.float32) for _ in range(3))
        flops = 4 * b * h * s * s * D / (2 if causal else 1)
        outs = [cf.flash_attn_func(q, k, v, causal=causal, precision=P, config=c) for c in cands]
        diff = float(cupy.abs(outs[0] - outs[1]).max())
        times = {i: [] for i in range(len(cands))}
        ev = [cupy.cuda.Event() for _ in range(2)]
        for _ in range(7):
            for i, c in enumerate(cands):
                ev[0].record()
                for _ in range(3):
                    cf.flash_attn_func(q, k, v, causal=causal, precision=P, config=c)
                ev[1].record()
                ev[1].synchronize()
                times[i].append(cupy.cuda.get_elapsed_time(*ev) / 3)
        base = float(np.median(times[0]))
        for i, c in enumerate(cands):
            ms = float(np.median(times[i]))
            print(f"| {D} | {s} | {causal} | {c} | {ms:.3f} | {flops / ms / 1e9:.1f} | {base / ms:.2f}x |"
                  + (f" (outputs differ by {diff:.1e})" if i else ""), flush=True)
        del q, k, v, outs
        cupy.get_default_memory_pool().free_all_blocks()

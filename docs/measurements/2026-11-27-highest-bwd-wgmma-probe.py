"""float32 "highest" backward at head dim 64: mma_tf32 32x128/w8 (the pick before) against wgmma_tf32 32x64/w4 (three
passes on split tiles), forced, interleaved rounds, median; then each one's errors against float64."""
import sys
import cupy
import numpy as np

import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _bt, _t
from cupyflash.reference import attention_backward_reference

d = int(sys.argv[1]) if len(sys.argv) > 1 else 64
cands = [_t(32, 128, 8), _bt(32, 64, 4)]
for c in cands:
    key = (c.family, d)
    configs.TABLES["bwd"][key] = tuple(dict.fromkeys(tuple(configs.TABLES["bwd"].get(key, ())) + (c,)))
P = "highest"
print("| D | seqlen | tile | bwd ms | TFLOP/s | speed / first |")
print("|---|---|---|---|---|---|")
for s in (1024, 2048, 4096):
    b, h = 16384 // s, 2048 // d
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, precision=P, return_lse=True)
    flops = 2.5 * 4 * b * h * s * s * d
    times = {i: [] for i in range(len(cands))}
    for c in cands:
        cf.flash_attn_backward(do, q, k, v, out, lse, precision=P, config=c, atomic_dq=True)
    ev = [cupy.cuda.Event() for _ in range(2)]
    for _ in range(5):
        for i, c in enumerate(cands):
            ev[0].record()
            for _ in range(2):
                cf.flash_attn_backward(do, q, k, v, out, lse, precision=P, config=c, atomic_dq=True)
            ev[1].record(); ev[1].synchronize()
            times[i].append(cupy.cuda.get_elapsed_time(*ev) / 2)
    base = float(np.median(times[0]))
    for i, c in enumerate(cands):
        ms = float(np.median(times[i]))
        print(f"| {d} | {s} | {c} | {ms:.3f} | {flops / ms / 1e9:.1f} | {base / ms:.2f}x |", flush=True)
    del q, k, v, do, out, lse
    cupy.get_default_memory_pool().free_all_blocks()
print()
print("errors: max |x - float64| (dq, dk, dv), batch 1, 2 heads, standard normal inputs")
for s in (1024, 4096):
    rng = cupy.random.default_rng(1)
    q, k, v, do = (rng.standard_normal((1, s, 2, d), dtype=cupy.float32) for _ in range(4))
    ref = attention_backward_reference(*(x.astype(cupy.float64) for x in (do, q, k, v)))
    out, lse = cf.flash_attn_func(q, k, v, precision=P, return_lse=True)
    row = []
    for c in cands:
        for atomic in (True, False):
            got = cf.flash_attn_backward(do, q, k, v, out, lse, precision=P, config=c, atomic_dq=atomic)
            row.append(f"{c.family} {'atomic' if atomic else 'det'} "
                       + " ".join(f"{float(cupy.abs(a - r).max()):.2e}" for a, r in zip(got, ref)))
    print(f"- S={s}: " + " | ".join(row), flush=True)

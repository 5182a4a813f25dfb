"""float32 "highest" forward at head dim 64: mma_tf32 128x64/w4/b2 (the pick before) against wgmma_tf32 128x64 with a
cp.async producer whose threads split what they copy (three passes a product), forced, interleaved rounds, median;
then each one's output error against float64."""
import cupy
import numpy as np

import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _t, _wh
from cupyflash.reference import attention_reference

d = 64
from cupyflash._device import device_limits
from cupyflash.problem import Variant

cands = [configs.select_config("fwd", device_limits(0), d, variant=Variant("float32", precision="highest"),
                               family="mma_tf32"), _wh(128, 64)]
P = "highest"
print("| D | causal | seqlen | tile | fwd ms | TFLOP/s | speed / first |")
print("|---|---|---|---|---|---|---|")
for causal in (False, True):
    for s in (1024, 2048, 4096, 8192):
        b, h = 16384 // s, 2048 // d
        rng = cupy.random.default_rng(0)
        q, k, v = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(3))
        flops = 4 * b * h * s * s * d / (2 if causal else 1)
        times = {i: [] for i in range(len(cands))}
        for c in cands:
            cf.flash_attn_func(q, k, v, precision=P, config=c, causal=causal)
        ev = [cupy.cuda.Event() for _ in range(2)]
        for _ in range(5):
            for i, c in enumerate(cands):
                ev[0].record()
                for _ in range(3):
                    cf.flash_attn_func(q, k, v, precision=P, config=c, causal=causal)
                ev[1].record(); ev[1].synchronize()
                times[i].append(cupy.cuda.get_elapsed_time(*ev) / 3)
        base = float(np.median(times[0]))
        for i, c in enumerate(cands):
            ms = float(np.median(times[i]))
            print(f"| {d} | {causal} | {s} | {c} | {ms:.3f} | {flops / ms / 1e9:.1f} | {base / ms:.2f}x |", flush=True)
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()
print()
print("errors: max |out - float64|, |lse - float64|; batch 1, 2 heads, standard normal inputs")
for s in (1024, 4096):
    rng = cupy.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, s, 2, d), dtype=cupy.float32) for _ in range(3))
    ref_out, ref_lse = attention_reference(*(x.astype(cupy.float64) for x in (q, k, v)))
    row = []
    for c in cands:
        out, lse = cf.flash_attn_func(q, k, v, precision=P, config=c, return_lse=True)
        row.append(f"{c.family} {float(cupy.abs(out - ref_out).max()):.2e} {float(cupy.abs(lse - ref_lse).max()):.2e}")
    print(f"- S={s}: " + " | ".join(row), flush=True)

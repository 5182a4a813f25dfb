"""Kernel times (CUPTI via torch.profiler) of a packed call against the dense batch of equal lengths (16k tokens,
hidden 2048, bf16). From the checkout root: python docs/measurements/2026-11-27-packed-kernel-profile.py"""
import numpy as np, cupy as cp, torch
import cupyflash as cf
from cupyflash.bench import make_inputs, varlen_lengths
real = varlen_lengths(); mean = round(sum(real) / len(real)); equal = [mean] * len(real)
for kd in (64, 128):
    H = 2048 // kd
    dense = make_inputs(len(real), mean, H, kd, "bfloat16")
    qkv = [x[0] for x in make_inputs(1, sum(equal), H, kd, "bfloat16")]
    cu = cp.asarray(np.concatenate([[0], np.cumsum(equal)]).astype(np.int32))
    for name, fn in (("dense", lambda: cf.flash_attn_func(*dense)),
                     ("packed", lambda: cf.flash_attn_varlen_func(*qkv, cu, cu, mean, mean))):
        for _ in range(3): fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10): fn()
            torch.cuda.synchronize()
        for e in prof.key_averages():
            if e.device_time_total > 0:
                print(f"d{kd} {name}: {e.count}x {e.device_time_total / e.count:8.1f} us  {e.key[:110]}")

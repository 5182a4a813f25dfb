"""Where float32 forward + backward spends its device time, kernel by kernel: torch.profiler (CUPTI) records every
kernel of the process, CuPy's launches included. 16k tokens, hidden 2048 (batch 16384 / seqlen, nheads 2048 / head
dim), head dims 64 and 128 at 1k and 2k; five calls after three warm-ups; CUDA events around five more give the
total (the gap to the kernels' sum is launch and allocation time between them).
Run: ``python docs/measurements/2026-11-30-fp32-kernel-breakdown.py [tf32|highest]`` (needs PyTorch).
Measured (H100, twenty-second session): `2026-11-30-h100-s22-tf32-breakdown.md`."""
import sys
import cupy
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import cupyflash as cf

prec = sys.argv[1] if len(sys.argv) > 1 else "tf32"
cases = [(64, 1024), (128, 1024), (128, 2048), (64, 2048)]
for d, s in cases:
    b, h = 16384 // s, 2048 // d
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))

    def step():
        out, lse = cf.flash_attn_func(q, k, v, precision=prec, return_lse=True)
        cf.flash_attn_backward(do, q, k, v, out, lse, precision=prec)
    for _ in range(3):
        step()
    cupy.cuda.Device().synchronize()
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    e0.record()
    for _ in range(5):
        step()
    e1.record(); e1.synchronize()
    total = cupy.cuda.get_elapsed_time(e0, e1) / 5 * 1000
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        cupy.cuda.Device().synchronize()
    rows = [(e.device_time_total / 5, e.count / 5, e.key) for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(reverse=True)
    summed = sum(r[0] for r in rows)
    print(f"\n### {prec} d{d} s{s} (b{b} h{h}): events {total:.0f} us a fwd+bwd, kernels sum {summed:.0f} us")
    for us, n, key in rows[:14]:
        print(f"| {us:8.1f} us | {100 * us / total:5.1f}% | x{n:.0f} | {key[:150]}")

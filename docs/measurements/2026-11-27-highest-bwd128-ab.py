"""Median backward time, float32 "highest", head dim 128 (the pick), tree on PYTHONPATH; 16k tokens, hidden 2048
(twenty-seventh session, the A/B of 2026-11-27-h100-s27-helper-128-band.md)."""
import sys, cupy, numpy as np
import cupyflash as cf
tag = sys.argv[1]
for s, causal in ((1024, False), (4096, False), (8192, False), (4096, True)):
    b, h, d = 16384 // s, 16, 128
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, precision="highest", return_lse=True)
    run = lambda: cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision="highest")
    for _ in range(3): run()
    ev = [cupy.cuda.Event() for _ in range(2)]; ts = []
    for _ in range(10):
        ev[0].record(); run(); ev[1].record(); ev[1].synchronize()
        ts.append(cupy.cuda.get_elapsed_time(*ev))
    ms = float(np.median(ts)); fl = 2.5 * 4 * b * h * s * s * d / (2 if causal else 1)
    print(f"s={s:4d} causal={causal!s:5s} {tag} {ms:8.3f} ms {fl / ms / 1e9:6.1f} TFLOP/s", flush=True)
    del q, k, v, do, out, lse; cupy.get_default_memory_pool().free_all_blocks()

"""Median forward time of float32 "highest" at head dim 128 (the tree on PYTHONPATH), 16k tokens, hidden 2048.
Run as 2026-11-27-highest-ab-bwd.py."""
import sys, cupy, numpy as np
import cupyflash as cf
tag = sys.argv[1]
for d, s, causal in ((128, 1024, False), (128, 1024, True), (128, 4096, False), (128, 8192, False)):
    b, h = 16384 // s, 2048 // d
    rng = cupy.random.default_rng(0)
    q, k, v = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(3))
    for _ in range(3): cf.flash_attn_func(q, k, v, causal=causal, precision="highest")
    ev = [cupy.cuda.Event() for _ in range(2)]; ts = []
    for _ in range(25):
        ev[0].record(); cf.flash_attn_func(q, k, v, causal=causal, precision="highest"); ev[1].record()
        ev[1].synchronize(); ts.append(cupy.cuda.get_elapsed_time(*ev))
    ms = float(np.median(ts)); fl = 4 * b * h * s * s * d / (2 if causal else 1)
    print(f"d={d} s={s:4d} causal={causal!s:5s} {tag} {ms:.3f} ms {fl / ms / 1e9:.1f} TFLOP/s", flush=True)
    del q, k, v; cupy.get_default_memory_pool().free_all_blocks()

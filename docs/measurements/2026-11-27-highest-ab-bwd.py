"""Median backward time, float32, tree on PYTHONPATH: "highest" at head dim 64 (the helper kernel), and "tf32" at 64
and 128 (kernels whose SASS the dQ refactor moved); 16k tokens, hidden 2048; one line a case.
Run alternately on two trees, the old one on PYTHONPATH (twenty-sixth session: `PYTHONPATH=<old tree> python
<this file> old`, then `python <this file> new` from the checkout root, four rounds, after 8 s of
2026-11-27-gpu-warm.py)."""
import sys, cupy, numpy as np
import cupyflash as cf
tag = sys.argv[1]
cases = [("highest", 64, 1024, False), ("highest", 64, 1024, True), ("highest", 64, 4096, False),
         ("highest", 64, 8192, False), ("tf32", 64, 4096, False), ("tf32", 128, 4096, False)]
for prec, d, s, causal in cases:
    b, h = 16384 // s, 2048 // d
    rng = cupy.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, precision=prec, return_lse=True)
    run = lambda: cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision=prec)
    for _ in range(3): run()
    ev = [cupy.cuda.Event() for _ in range(2)]; ts = []
    for _ in range(15):
        ev[0].record(); run(); ev[1].record(); ev[1].synchronize()
        ts.append(cupy.cuda.get_elapsed_time(*ev))
    ms = float(np.median(ts)); fl = 2.5 * 4 * b * h * s * s * d / (2 if causal else 1)
    print(f"{prec:7s} d={d:3d} s={s:4d} causal={causal!s:5s} {tag} {ms:8.3f} ms {fl / ms / 1e9:6.1f} TFLOP/s", flush=True)
    del q, k, v, do, out, lse; cupy.get_default_memory_pool().free_all_blocks()

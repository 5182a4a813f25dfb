# Cost of the zero-padded copy for head dims that are not multiples of 8: time at D - 1 (padded copy) against D.
# Run on a GPU machine from the checkout: python docs/measurements/2026-11-25-padded-head-dim.py
import cupy, ml_dtypes, numpy as np, cupyflash as cf
def t(fn, n=20):
    for _ in range(3): fn()
    s, e = cupy.cuda.Event(), cupy.cuda.Event(); ts = []
    for _ in range(n):
        s.record(); fn(); e.record(); e.synchronize(); ts.append(cupy.cuda.get_elapsed_time(s, e))
    return float(np.median(ts))
for D, S in ((64, 4096), (128, 4096)):
    H = 2048 // D; B = 16384 // S
    for d in (D, D - 1):
        q, k, v, do = (cupy.random.standard_normal((B, S, H, d), dtype=cupy.float32).astype(cupy.float16) for _ in range(4))
        out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
        f = t(lambda: cf.flash_attn_func(q, k, v))
        b = t(lambda: cf.flash_attn_backward(do, q, k, v, out, lse))
        print(f"fp16 B={B} S={S} H={H} head_dim={d}: fwd {f:.3f} ms, bwd {b:.3f} ms")

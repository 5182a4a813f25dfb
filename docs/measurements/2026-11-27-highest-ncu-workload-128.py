"""float32 "highest" at head dim 128, 4k, batch 4, 16 heads: forward and backward twice (for ncu)."""
import cupy, cupyflash as cf
b, s, h, d = 4, 4096, 16, 128
rng = cupy.random.default_rng(0)
q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
for _ in range(2):
    out, lse = cf.flash_attn_func(q, k, v, precision="highest", return_lse=True)
    cf.flash_attn_backward(do, q, k, v, out, lse, precision="highest")
cupy.cuda.Device().synchronize()

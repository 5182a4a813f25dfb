"""Keeps the GPU busy for argv[1] seconds with a float32 forward (clocks and power settle before an A/B)."""
import sys, time, cupy
import cupyflash as cf
q, k, v = (cupy.random.standard_normal((4, 4096, 32, 64), dtype=cupy.float32) for _ in range(3))
end = time.time() + float(sys.argv[1])
while time.time() < end:
    cf.flash_attn_func(q, k, v, precision="tf32"); cupy.cuda.Device().synchronize()

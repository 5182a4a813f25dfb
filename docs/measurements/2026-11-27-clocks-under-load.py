"""Clocks and power under load (twenty-fifth session): the forward, bf16, head dim 64, batch 2 x 8192 x 32 heads, plain,
softcap 30, softcap 2, plain again, about 4 s each, with wall-clock stamps to match against a log of
`nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active,temperature.gpu --format=csv
-lms 250` started beside it. Measured (`2026-11-27-h100-s25-softcap-poly-probe.md`): every phase holds the board at
its 700 W cap (throttle reason 0x4, software power cap), plain at 1455-1665 MHz, softcap at 1665-1845 MHz; idle
between phases, 1980 MHz."""
import time, cupy
import cupyflash as cf
from cupyflash.bench import make_inputs
q, k, v = make_inputs(2, 8192, 32, 64, "bfloat16")
for name, kw in (("plain", {}), ("softcap30", dict(softcap=30.0)), ("softcap2", dict(softcap=2.0)), ("plain", {})):
    cf.flash_attn_func(q, k, v, **kw); cupy.cuda.Device().synchronize()
    t0 = time.time(); n = 0
    while time.time() - t0 < 4:
        for _ in range(10): cf.flash_attn_func(q, k, v, **kw)
        cupy.cuda.Device().synchronize(); n += 10
    print(f"{name} {t0:.2f}-{time.time():.2f} {(time.time()-t0)/n*1e3:.3f} ms/call", flush=True)
    time.sleep(1)

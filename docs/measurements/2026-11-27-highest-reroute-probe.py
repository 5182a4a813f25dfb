"""float32 "highest", head dim 64: forward of packed rows (varlen, 16 x 1024 tokens, 16 heads) and of dense rows
with dropout 0.1 (4 x 4096, 16 heads), on 128x64/b2 (spills 120-180 bytes, sm_90) against 64x64 (the pick now);
median of 20 after 3 warm-ups, CUDA events, interleaved rounds."""
import cupy, numpy as np
import cupyflash as cf
from cupyflash.configs import TileConfig, candidates
from cupyflash._device import device_limits
from cupyflash.problem import Variant

def timeit(fn, n=20):
    for _ in range(3): fn()
    ev = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(n)]
    for a, b in ev:
        a.record(); fn(); b.record()
    b.synchronize()
    return float(np.median([cupy.cuda.get_elapsed_time(a, b) for a, b in ev]))

limits = device_limits(0)
cands = {str(c): c for c in candidates("fwd", limits, 64, Variant("float32", "none", rows="packed", precision="highest"))}
print("candidates:", list(cands))
big = next(c for s, c in cands.items() if s.startswith("mma_tf32:128x64"))
small = next(c for s, c in cands.items() if s.startswith("mma_tf32:64x64"))
rng = cupy.random.default_rng(0)
n, H = 16 * 1024, 16
q, k, v = (rng.standard_normal((n, H, 64), dtype=cupy.float32) for _ in range(3))
cu = cupy.arange(0, n + 1, 1024, dtype=cupy.int32)
qd, kd, vd = (x.reshape(4, 4096, H, 64) for x in (q, k, v))
for rnd in range(2):
    for name, cfg in (("128x64", big), ("64x64", small)):
        t1 = timeit(lambda: cf.flash_attn_varlen_func(q, k, v, cu, cu, 1024, 1024, precision="highest", config=cfg))
        t2 = timeit(lambda: cf.flash_attn_func(qd, kd, vd, dropout_p=0.1, precision="highest", config=cfg))
        fl1, fl2 = 4 * 16 * H * 1024 * 1024 * 64, 4 * 4 * H * 4096 * 4096 * 64
        print(f"round {rnd} {name}: packed {t1:.3f} ms ({fl1 / t1 / 1e9:.1f} TFLOP/s), dropout {t2:.3f} ms "
              f"({fl2 / t2 / 1e9:.1f} TFLOP/s)", flush=True)

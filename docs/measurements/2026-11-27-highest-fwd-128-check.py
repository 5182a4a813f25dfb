"""float32 "highest" forward at head dim 128: mma_tf32's pick against wgmma_tf32 64x32 (one consumer warpgroup),
forced; correctness against float64 first (awkward shapes, causal, softcap + ALiBi + window)."""
import math, cupy, numpy as np
import cupyflash as cf
from cupyflash import configs
from cupyflash.configs import _wh
from cupyflash._device import device_limits
from cupyflash.problem import Variant
from cupyflash._accuracy import check_against_reference
d = 128
new = _wh(64, 32)
key = ("wgmma_tf32", d)
configs.TABLES["fwd"][key] = tuple(configs.TABLES["fwd"][key]) + (new,)
base = configs.select_config("fwd", device_limits(0), d, variant=Variant("float32", precision="highest"))
print("pick:", base)
rng = cupy.random.default_rng(5)
for (sq, sk, causal, kw) in [(97, 300, False, {}), (130, 97, True, {}), (257, 257, True, dict(softcap=20.0, window_size=(40, 0))),
                             (1, 33, False, {}), (300, 1, False, {})]:
    for hd in (100, 128):
        q = rng.standard_normal((2, sq, 4, hd), dtype=cupy.float32); k = rng.standard_normal((2, sk, 2, hd), dtype=cupy.float32)
        v = rng.standard_normal((2, sk, 2, hd), dtype=cupy.float32)
        out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision="highest", config=new, **kw)
        check_against_reference(out, lse, *(x.astype(cupy.float64) for x in (q, k, v)), 1 / math.sqrt(hd), causal, "float32", **kw)
print("correctness: ok")
print("| causal | seqlen | tile | fwd ms | TFLOP/s | speed / pick |")
for causal in (False, True):
    for s in (1024, 4096):
        b, h = 16384 // s, 2048 // d
        q, k, v = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(3))
        flops = 4 * b * h * s * s * d / (2 if causal else 1)
        cands = [base, new]; times = {i: [] for i in range(2)}
        for c in cands: cf.flash_attn_func(q, k, v, precision="highest", config=c, causal=causal)
        ev = [cupy.cuda.Event() for _ in range(2)]
        for _ in range(4):
            for i, c in enumerate(cands):
                ev[0].record()
                for _ in range(2): cf.flash_attn_func(q, k, v, precision="highest", config=c, causal=causal)
                ev[1].record(); ev[1].synchronize(); times[i].append(cupy.cuda.get_elapsed_time(*ev) / 2)
        b0 = float(np.median(times[0]))
        for i, c in enumerate(cands):
            ms = float(np.median(times[i]))
            print(f"| {causal} | {s} | {c} | {ms:.3f} | {flops / ms / 1e9:.1f} | {b0 / ms:.2f}x |", flush=True)

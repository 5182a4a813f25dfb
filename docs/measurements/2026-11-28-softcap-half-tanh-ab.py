"""Issue 7 (softcap forward >= 0.9x plain): softcap's tanh on the score rounded to half (tanh.approx.f16, MUFU.TANH.F16,
16 a clock an SM) rather than tanh.approx.f32 (MUFU.TANH, 12.8 a clock an SM; `2026-11-28-h100-s30-mufu-rate.md`),
for bfloat16 inputs, whose P operand is rounded to 8 bits anyway. Each score gains two FMA-pipe instructions (F2FP to
half, HADD2.F32 back). Expected: where the forward's softmax is MUFU-bound (softcap: tanh 10 + ex2 8 cycles a warp a
score against the d64 tile's ~16 of tensor work a 32 scores) up to ~10% on softcap's time; plain unchanged.

Run once per tree (argument: a tag), trees alternated: bf16 forward, 16k tokens, hidden 2048, head dims 64 and 128,
seqlens 2k and 8k, causal and not, plain and softcap 30: TFLOP/s (CUDA events, 3 warm-ups, median of 20) and softcap /
plain; then each tree's largest |error| of out and lse against float64 at softcap 30 and 5 with inputs scaled by 1 and 4
(saturated tanh), seqlen 1k, 2 heads, head dim 64 and 128."""
import sys

import cupy
import numpy as np

import cupyflash as cf
from cupyflash.bench import _cupy_dtype
from cupyflash.reference import attention_reference


def timeit(fn, n=20):
    for _ in range(3):
        fn()
    ev = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(n)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    b.synchronize()
    return float(np.median([cupy.cuda.get_elapsed_time(a, b) for a, b in ev]))


BF16 = _cupy_dtype("bfloat16")
tag = sys.argv[1]
rng = cupy.random.default_rng(0)
cells = []
for d in (64, 128):
    for s in (2048, 8192):
        b, h = 16384 // s, 2048 // d
        q, k, v = (rng.standard_normal((b, s, h, d), dtype=cupy.float32).astype(BF16) for _ in range(3))
        for causal in (False, True):
            fl = 4 * b * h * s * s * d / (2 if causal else 1)
            tp = timeit(lambda: cf.flash_attn_func(q, k, v, causal=causal))
            tc = timeit(lambda: cf.flash_attn_func(q, k, v, causal=causal, softcap=30.0))
            cells.append(f"{d}/{s // 1024}k{'c' if causal else 'n'} {fl / tp / 1e9:.0f}/{fl / tc / 1e9:.0f}={tp / tc:.3f}")
        del q, k, v
print(tag, "speed plain/softcap=ratio:", " ".join(cells), flush=True)
errs = []
host_rng = np.random.default_rng(1)


def to64(x):  # a device bf16 array's values in float64, through the host (CuPy casts bf16 only from float32)
    return cupy.asarray(x.view(cupy.uint16).get().view(BF16).astype(np.float64))


for d in (64, 128):
    for cap, gain in ((30.0, 1.0), (30.0, 4.0), (5.0, 1.0), (5.0, 4.0)):
        q, k, v = (host_rng.standard_normal((1, 1024, 2, d)) * g for g in (gain, gain, 1.0))
        q, k, v = (cupy.asarray(x.astype(BF16).view(np.uint16)).view(BF16) for x in (q, k, v))
        out, lse = cf.flash_attn_func(q, k, v, softcap=cap, return_lse=True)
        o64, l64 = attention_reference(*(to64(x) for x in (q, k, v)), softcap=cap)
        e_out = float(cupy.abs(to64(out) - o64).max())
        e_lse = float(cupy.abs(lse.astype(cupy.float64) - l64).max())
        errs.append(f"{d}/c{cap:g}/x{gain:g} {e_out:.2e}/{e_lse:.2e}")
print(tag, "errors out/lse:", " ".join(errs), flush=True)

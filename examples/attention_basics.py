# What this shows: calling cupyflash.flash_attn_func on float16 inputs (non-causal, and causal with the
# log-sum-exp), checking both against the float64 reference, running bfloat16 through ml_dtypes, and passing
# a (batch, nheads, seqlen, headdim) buffer through a transposed view, without a copy.
# Run: python examples/attention_basics.py
import sys

try:
    import cupy
    have_gpu = cupy.cuda.is_available()
except Exception:
    have_gpu = False
if not have_gpu:
    print("No CUDA GPU found: this example needs one (the CPU test suite still runs: python -m pytest -q tests).")
    sys.exit(0)

import ml_dtypes

import cupyflash as cf
from cupyflash.reference import attention_reference


def max_err(a, b):
    return float(cupy.abs(a.astype(cupy.float64) - b).max())


batch, seqlen, nheads, headdim = 2, 1000, 8, 64
q, k, v = (cupy.random.standard_normal((batch, seqlen, nheads, headdim), dtype=cupy.float32).astype(cupy.float16)
           for _ in range(3))

# Non-causal: out has q's shape and dtype.
out = cf.flash_attn_func(q, k, v)
ref_out, ref_lse = attention_reference(q, k, v)
print(f"float16            out {out.shape} {out.dtype}  max abs error {max_err(out, ref_out):.2e}")

# Causal, also returning the log-sum-exp: float32, shape (batch, nheads, seqlen_q).
out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True)
ref_out, ref_lse = attention_reference(q, k, v, causal=True)
print(f"float16 causal     out max abs error {max_err(out, ref_out):.2e}, "
      f"lse {lse.shape} {lse.dtype} max abs error {max_err(lse, ref_lse):.2e}")
print(f"tile configuration used: {cf.select_config_for(q, k, v, causal=True)}")

# bfloat16: CuPy arrays whose dtype is ml_dtypes.bfloat16.
qb, kb, vb = (x.astype(cupy.float32).astype(ml_dtypes.bfloat16) for x in (q, k, v))
out_b = cf.flash_attn_func(qb, kb, vb)
ref_b, _ = attention_reference(qb, kb, vb)
print(f"bfloat16           out {out_b.dtype}  max abs error {max_err(out_b.astype(cupy.float32), ref_b):.2e}")

# A (batch, nheads, seqlen, headdim) buffer, used through a (batch, seqlen, nheads, headdim) view.
qkv_bhsd = cupy.random.standard_normal((3, batch, nheads, seqlen, headdim), dtype=cupy.float32).astype(cupy.float16)
qt, kt, vt = (x.transpose(0, 2, 1, 3) for x in qkv_bhsd)  # views: the head dim stays contiguous
out_t = cf.flash_attn_func(qt, kt, vt)
ref_t, _ = attention_reference(qt, kt, vt)
print(f"transposed view    q contiguous: {qt.flags.c_contiguous}  max abs error {max_err(out_t, ref_t):.2e}")

"""Run a small forward and backward of every kernel variant that fits this GPU, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python tests/gpu_sanitize_variants.py
    compute-sanitizer --tool racecheck python tests/gpu_sanitize_variants.py

Seqlens straddle tile edges so partial tiles, masking and the causal skip all run. Not a pytest module: the
sanitizer wraps the whole process.
"""
import sys

import ml_dtypes
import numpy as np

import cupy
import cupyflash as cf
from cupyflash._device import device_limits
from cupyflash.configs import KERNEL_HEAD_DIMS, candidates

limits = device_limits(0)
rng = np.random.default_rng(0)


def arrays(dtype, *shapes):
    out = [cupy.asarray(rng.standard_normal(s, np.float32)).astype(cupy.float16) for s in shapes]
    # bf16 runs get the same bits reinterpreted: values are irrelevant to the sanitizer
    return [x.view(ml_dtypes.bfloat16) for x in out] if dtype == "bfloat16" else out


count = 0
for kd in KERNEL_HEAD_DIMS:
    d = kd - 8
    for dtype in ("float16", "bfloat16"):
        for causal in (False, True):
            for config in candidates("fwd", limits, kd):
                q, k = arrays(dtype, (1, config.block_m + 3, 1, d), (1, config.block_n + 5, 1, d))
                cf.flash_attn_func(q, k, k, causal=causal, config=config)
                count += 1
            for config in candidates("bwd", limits, kd):
                q, k, dout = arrays(dtype, (1, config.block_m + 3, 1, d), (1, config.block_n + 5, 1, d),
                                    (1, config.block_m + 3, 1, d))
                out, lse = cf.flash_attn_func(q, k, k, causal=causal, return_lse=True)
                cf.flash_attn_backward(dout, q, k, k, out, lse, causal=causal, config=config, atomic_dq=True)
                cf.flash_attn_backward(dout, q, k, k, out, lse, causal=causal, config=config, atomic_dq=False)
                count += 2
            for config in candidates("bwd_dq", limits, kd):
                q, k, dout = arrays(dtype, (1, config.block_m + 3, 1, d), (1, config.block_n + 5, 1, d),
                                    (1, config.block_m + 3, 1, d))
                out, lse = cf.flash_attn_func(q, k, k, causal=causal, return_lse=True)
                cf.flash_attn_backward(dout, q, k, k, out, lse, causal=causal, deterministic=True, dq_config=config)
                count += 1
            cupy.cuda.Device().synchronize()
print(f"ran {count} variants", file=sys.stderr)

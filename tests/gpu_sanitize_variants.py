"""Run a small forward of every kernel variant that fits this GPU, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python tests/gpu_sanitize_variants.py
    compute-sanitizer --tool racecheck python tests/gpu_sanitize_variants.py

Seqlens straddle tile edges so partial tiles, masking and the causal skip all run. Not a pytest module: the
sanitizer wraps the whole process.
"""
import sys

import numpy as np

import cupy
import cupyflash as cf
from cupyflash._device import device_limits
from cupyflash.configs import KERNEL_HEAD_DIMS, fwd_candidates

limits = device_limits(0)
rng = np.random.default_rng(0)
count = 0
for kd in KERNEL_HEAD_DIMS:
    for config in fwd_candidates(limits, kd):
        for dtype in ("float16", "bfloat16"):
            for causal in (False, True):
                d = kd - 8
                q = cupy.asarray(rng.standard_normal((1, config.block_m + 3, 1, d), np.float32)).astype(cupy.float16)
                k = cupy.asarray(rng.standard_normal((1, config.block_n + 5, 1, d), np.float32)).astype(cupy.float16)
                if dtype == "bfloat16":  # same bits reinterpreted: values are irrelevant to the sanitizer
                    import ml_dtypes
                    q, k = q.view(ml_dtypes.bfloat16), k.view(ml_dtypes.bfloat16)
                out = cf.flash_attn_func(q, k, k, causal=causal, config=config)
                cupy.cuda.Device().synchronize()
                count += 1
print(f"ran {count} variants", file=sys.stderr)

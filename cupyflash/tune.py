"""Time every forward tile candidate that fits this GPU, per head dim, to keep the config table's order honest.

    python -m cupyflash.tune [--seqlen 4096] [--headdim 64 128 ...] [--dtype bfloat16 float16 float32 tf32]

Shape: 16k tokens (batch = 16384 // seqlen), hidden 2048 (nheads = 2048 // headdim), bfloat16 and float16 by
default (float32: precision "highest"; tf32: float32 inputs at precision "tf32"), causal and not. Prints TFLOP/s
(forward FLOPs 4*B*H*S*S*D, halved when causal), median of CUDA-event timings.
"""
from __future__ import annotations

import argparse

import numpy as np


#: --dtype's names: (array dtype, precision)
DTYPES = {"bfloat16": ("bfloat16", None), "float16": ("float16", None), "float32": ("float32", "highest"),
          "tf32": ("float32", "tf32")}


def main(argv=None):
    from ._cli import require_gpu
    from .configs import KERNEL_HEAD_DIMS

    p = argparse.ArgumentParser(prog="python -m cupyflash.tune", description=__doc__.splitlines()[0])
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--headdim", type=int, nargs="+", default=list(KERNEL_HEAD_DIMS))
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=["bfloat16", "float16"])
    args = p.parse_args(argv)
    require_gpu("cupyflash tune")

    import cupy
    import ml_dtypes

    import cupyflash as cf
    from cupyflash._device import device_limits
    from cupyflash.configs import candidates
    from cupyflash.problem import Variant

    limits = device_limits(0)
    s = args.seqlen
    print(f"{limits.name}: seqlen {s}, 16k tokens, hidden 2048")
    print("| head dim | dtype | causal | config | ms | TFLOP/s |\n|---|---|---|---|---|---|")
    for d in args.headdim:
        b, h = max(1, 16384 // s), max(1, 2048 // d)
        for dtype in args.dtype:
            array_dtype, precision = DTYPES[dtype]
            shape = (b, s, h, d)
            cast = {"float16": cupy.float16, "bfloat16": ml_dtypes.bfloat16, "float32": cupy.float32}[array_dtype]
            q, k, v = (cupy.random.standard_normal(shape, dtype=cupy.float32).astype(cast) for _ in range(3))
            variant = Variant(array_dtype, precision=precision or "")
            for causal in (False, True):
                flops = 4 * b * h * s * s * d / (2 if causal else 1)
                for config in candidates("fwd", limits, d, variant):
                    if config.block_m < 64:  # the small-memory fallbacks are not contenders on a big GPU
                        continue
                    ms = _time(lambda: cf.flash_attn_func(q, k, v, causal=causal, config=config,
                                                          precision=precision))
                    print(f"| {d} | {dtype} | {causal} | {config} | {ms:.3f} | {flops / ms / 1e9:.0f} |",
                          flush=True)


def _time(fn, warmup=3, repeat=20):
    import cupy

    for _ in range(warmup):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


if __name__ == "__main__":
    main()

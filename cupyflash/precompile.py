"""Compile every kernel variant for this machine's GPU in parallel, filling CuPy's disk cache.

    python -m cupyflash.precompile [--jobs N]

Later processes (tests, benchmarks, users) then load binaries in milliseconds instead of compiling.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor


def _variants():
    from .configs import all_variants

    return [(kind, kd, config, dtype, causal) for kind in ("fwd", "bwd", "bwd_dq")
            for _fam, kd, config in all_variants(kind) for dtype in ("float16", "bfloat16") for causal in (False, True)]


def _compile(chunk):
    from . import _kernels
    from ._device import device_limits
    from .configs import fits

    limits = device_limits(0)
    done = 0
    for kind, kd, config, dtype, causal in chunk:
        if not fits(config, kd, limits, residency=False, kind=kind):
            continue
        if kind == "fwd":
            _kernels.fwd_function(config, kd, dtype, causal, 0)
        elif kind == "bwd_dq":
            _kernels.bwd_dq_function(config, kd, dtype, causal, 0)
        else:
            for atomic in (True, False):
                _kernels.bwd_function(config, kd, dtype, causal, atomic, 0)
            _kernels.bwd_preprocess_function(dtype, 0)
            _kernels.bwd_convert_dq_function(dtype, 0)
        done += 1
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    os.environ.setdefault("CUPYFLASH_QUIET", "1")
    variants = _variants()
    chunks = [variants[i::args.jobs] for i in range(args.jobs)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        total = sum(pool.map(_compile, chunks))
    print(f"cupyflash: {total} kernel variants ready in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

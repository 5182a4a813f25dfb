"""Compile kernel instances for this machine's GPU in parallel, filling CuPy's disk cache.

    python -m cupyflash.precompile [--jobs N] [--variants] [--dtypes ...] [--head-dims ...] [--bias ...] [--kinds ...]
                                   [--part K/N]

Default: every tile config that fits the device, plain scores, with and without the band mask (causal, windows),
every dtype (float32 at each precision); ``--dtypes`` and ``--head-dims`` narrow that. ``--variants`` adds every
mask x softcap x ALiBi x row layout (dense, packed variable-length) x bias dtype (dense rows; with and without dbias)
x boolean mask (dense rows; read where it cuts tiles, or block-sparse) combination with the tiles the dispatcher
picks.
Later processes (tests, benchmarks, users) then load binaries in milliseconds instead of compiling.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

DTYPES = ("float16", "bfloat16", "float32")


def _instances(limits, with_variants: bool, dtypes=DTYPES, dropout: bool = False):
    from .configs import KERNEL_HEAD_DIMS, NoConfigFits, candidates, row_lengths, select_config
    from .families import KINDS
    from .problem import MASKS, Variant, precisions_of, variant_combinations

    out = set()
    for kind, kd, dtype, mask in itertools.product(KINDS, KERNEL_HEAD_DIMS, dtypes, MASKS):
        for precision in precisions_of(dtype):
            variant = Variant(dtype, mask, precision=precision)
            out.update((kind, kd, config, variant) for config in candidates(kind, limits, kd, variant))
    if with_variants or dropout:
        for kind, kd in itertools.product(KINDS, KERNEL_HEAD_DIMS):
            for variant in variant_combinations(kind, dtypes, dropouts=(False, True) if dropout else (False,)):
                if not with_variants and (variant.bias != "none" or variant.bool_mask or not variant.dropout):
                    continue  # --dropout alone: with dropout, every mask, modifier and row layout, no bias
                # the picks for long problems and for each row limit of the table (decode-shaped, short rows)
                for seqlen_q in row_lengths(kind):
                    try:
                        out.add((kind, kd, select_config(kind, limits, kd, variant=variant, seqlen_q=seqlen_q),
                                 variant))
                    except NoConfigFits:  # the call raises that; nothing to compile
                        pass
    return sorted(out, key=str)


def _compile(chunk):
    from . import _kernels
    from ._device import device_limits
    from .configs import family_for
    from .families import BY_NAME, HELPER_KINDS, TF32_STAGING_KINDS

    limits = device_limits(0)
    for kind, kd, config, variant in chunk:
        family = BY_NAME[config.family]
        for atomic in ((True, False) if kind == "bwd" else (False,)):
            _kernels.get_function(family, kind, config, kd, variant, 0, atomic)
        for staging in TF32_STAGING_KINDS if variant.precision == "tf32" else ():  # float32 operands rounded
            if staging in family.kinds:
                _kernels.get_function(family, staging, None, 0, variant, 0)
        for helper in HELPER_KINDS:
            _kernels.get_function(family_for(limits, variant), helper, None, 0, variant, 0)
    return len(chunk)


def main(argv=None):
    from ._cli import die, first_line, require_gpu
    from ._device import device_limits
    from .families import KINDS

    parser = argparse.ArgumentParser(prog="python -m cupyflash.precompile", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", action="store_true", help="also every variant combination")
    parser.add_argument("--dropout", action="store_true",
                        help="also with dropout: every mask, score modifier and row layout (with --variants: "
                             "every combination)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES, help="input dtypes (default: all)")
    parser.add_argument("--head-dims", nargs="+", type=int, metavar="D",
                        help="only the kernels that serve these head dims (default: all)")
    parser.add_argument("--bias", nargs="+", metavar="DTYPE",
                        help="only instances with these bias dtypes (none, float16, bfloat16, float32) or, 'bool', "
                             "a boolean mask")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, metavar="KIND",
                        help=f"only these kernels ({', '.join(KINDS)}; default: all): e.g. fwd before a forward-only "
                             "run, a fifth of the instances")
    parser.add_argument("--part", default="1/1", metavar="K/N",
                        help="only the K-th of N equal shares of the instances (to spread the work over commands "
                             "with a time limit; the shares of 1/N .. N/N together are all of them)")
    args = parser.parse_args(argv)
    try:
        part, parts = map(int, args.part.split("/"))
        assert 1 <= part <= parts
    except (ValueError, AssertionError):
        parser.error(f"--part takes K/N with 1 <= K <= N; got {args.part!r}")
    require_gpu("cupyflash precompile")
    os.environ.setdefault("CUPYFLASH_QUIET", "1")
    instances = _instances(device_limits(0), args.variants, tuple(args.dtypes), args.dropout)
    if args.bias:
        instances = [i for i in instances if i[3].bias in args.bias or ("bool" in args.bias and i[3].bool_mask)]
    if args.kinds:
        instances = [i for i in instances if i[0] in args.kinds]
    if args.head_dims:
        from .configs import kernel_head_dim

        kernel_dims = {kernel_head_dim(d) for d in args.head_dims}
        instances = [i for i in instances if i[1] in kernel_dims]
    instances = instances[part - 1::parts]
    chunks = [instances[i::args.jobs] for i in range(args.jobs)]
    start = time.perf_counter()
    # spawn: this process has a CUDA context already, which forked children must not inherit
    try:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            total = sum(pool.map(_compile, chunks))
    except Exception as exc:  # a worker's error comes back here with the worker's traceback: one line instead
        die("cupyflash precompile", f"compiling failed: {first_line(exc)}", 1)
    print(f"cupyflash: {total} kernel instances ready in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

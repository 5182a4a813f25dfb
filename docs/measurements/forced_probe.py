"""What the probes that time forced configs share (score-mod tile probe, stages probe): each shape's inputs as the
benchmark makes them (bf16, 16k tokens, hidden 2048) with the ALiBi paper's slopes, compiling the forced kernels in
parallel first (CuPy's disk cache keeps them), and the command line: ``--compile``, then a run without it."""
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor


def inputs(shapes):
    """(d, s, q, k, v, slopes) for each (head dim, seqlen); the memory pool is emptied after each."""
    import cupy

    from cupyflash.bench import HIDDEN, TOKENS, make_inputs

    for d, s in shapes:
        nheads = HIDDEN // d
        q, k, v = make_inputs(TOKENS // s, s, nheads, d, "bfloat16")
        slopes = cupy.asarray([2.0 ** (-8.0 * (h + 1) / nheads) for h in range(nheads)], dtype=cupy.float32)
        yield d, s, q, k, v, slopes
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()


def compile_forced(work, jobs=16):
    """Compiles each (kind, head dim, config, variant) of ``work`` in a process of its own, ``jobs`` at a time."""
    from cupyflash.precompile import _compile

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, [[w] for w in work]))


def cli(work, main):
    """``--compile``: compile_forced(work()); otherwise main()."""
    if "--compile" in sys.argv:
        compile_forced(work())
    else:
        main()

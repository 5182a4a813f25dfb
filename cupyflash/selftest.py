"""``python -m cupyflash selftest``: a quick check that cupyflash computes the right thing on this machine's GPU.

A handful of small forward and backward problems (float16 and bfloat16, causal, grouped-query with dQ by atomics,
a sliding window, an additive bias with its gradient) against cupyflash.reference's float64 attention, judged as
the GPU tests judge them (cupyflash._accuracy: at most twice the error of the naive computation in the input
precision, plus a small floor). One line per check, then a summary; exit status 1 if any check fails, 2 without a
GPU.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Check:
    name: str
    dtype: str
    shape: tuple  # (batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim)
    kw: dict = field(default_factory=dict)  # keywords of the forward and the backward (and the reference)
    bwd_kw: dict = field(default_factory=dict)  # the backward's own
    bias: tuple | None = None  # a float16 bias of this shape, its gradient returned too


# Lengths off the tile edges; head dims 64 and 128 (and padded 59), so the run compiles a few kernels only.
CHECKS = (
    Check("float16", "float16", (2, 97, 97, 4, 4, 64)),
    Check("bfloat16 causal, seqlen_q < seqlen_k", "bfloat16", (2, 65, 130, 4, 4, 128), {"causal": True}),
    Check("float16 GQA 8:2 causal, dQ by atomics", "float16", (1, 200, 200, 8, 2, 64), {"causal": True},
          {"atomic_dq": True}),
    Check("bfloat16 window (48, 16), head dim 59", "bfloat16", (2, 257, 257, 2, 2, 59), {"window_size": (48, 16)}),
    Check("float16 with a (1, H, Sq, Sk) bias and dbias", "float16", (2, 97, 130, 4, 4, 64), bias=(1, 4, 97, 130)),
)


def run_check(check: Check, seed: int, attention=None, xp=None) -> dict[str, float]:
    """Each output's error as a fraction of the error it is allowed (above 1: a failure); AccuracyError for NaN,
    inf or misplaced -inf. ``attention`` and ``xp`` (cupyflash and CuPy by default) let a test run the same
    check on a stand-in."""
    from ._accuracy import allowed, forward_errors, grad_errors, random_array

    if attention is None:
        import cupyflash as attention
    rng = np.random.default_rng(seed)
    b, sq, sk, h, hk, d = check.shape
    (q, q64), (k, k64), (v, v64), (dout, dout64) = (
        random_array(rng, shape, check.dtype, xp=xp) for shape in ((b, sq, h, d), (b, sk, hk, d), (b, sk, hk, d),
                                                                   (b, sq, h, d)))
    kw, ref_kw = dict(check.kw), {key: value for key, value in check.kw.items() if key != "causal"}
    if check.bias:
        kw["bias"], ref_kw["bias"] = random_array(rng, check.bias, "float16", xp=xp)
    out, lse = attention.flash_attn_func(q, k, v, return_lse=True, **kw)
    grads = attention.flash_attn_backward(dout, q, k, v, out, lse, return_dbias=check.bias is not None, **kw,
                                          **check.bwd_kw)
    scale, causal = 1 / math.sqrt(d), check.kw.get("causal", False)
    errors = {**forward_errors(out, lse, q64, k64, v64, scale, causal, check.dtype, **ref_kw),
              # dbias sums dS over broadcast dims: judged with D from the kernel's own out, as the tests do
              **grad_errors(grads, dout64, q64, k64, v64, scale, causal, check.dtype,
                            out=out if check.bias else None, **ref_kw)}
    return {name: err / allowed(naive, floor) for name, (err, naive, floor) in errors.items()}


def main(argv=None) -> int:
    from ._accuracy import AccuracyError
    from ._cli import first_line, require_gpu

    argparse.ArgumentParser(prog="python -m cupyflash selftest",
                            description=__doc__.splitlines()[0].replace("``", "")).parse_args(argv)
    require_gpu("cupyflash selftest")
    from ._device import device_limits
    from .info import device_line

    os.environ.setdefault("CUPYFLASH_QUIET", "1")  # one line per check, not one per compiled kernel
    print(device_line(0, device_limits(0)))
    print("(a first run compiles the kernels it needs, which can take minutes; they are cached on disk)", flush=True)
    failed = 0
    for seed, check in enumerate(CHECKS):
        b, sq, sk, h, hk, d = check.shape
        what = f"{check.name}: batch {b}, seqlen {sq}x{sk}, heads {h}/{hk}, head dim {d}"
        try:
            ratios = run_check(check, seed)
            worst = max(ratios, key=ratios.get)
            ok, detail = ratios[worst] <= 1, f"worst {worst}, {ratios[worst]:.2f} of its allowed error"
        except AccuracyError as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # a kernel that fails to compile or launch fails its check; the rest still run
            ok, detail = False, first_line(exc)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}", flush=True)
    print(f"selftest: {len(CHECKS) - failed} of {len(CHECKS)} checks passed"
          + (" (errors are against cupyflash.reference's float64 attention)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""How a kernel's result is judged against the float64 reference (the GPU tests and ``python -m cupyflash
selftest``): an error is acceptable when it is at most twice that of the same computation done naively in the input
precision (cupyflash.reference's ``*_naive_lowp``), plus a small floor. Works on CuPy or NumPy arrays.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .reference import (_namespace, attention_backward_naive_lowp, attention_backward_reference,
                        attention_naive_lowp, attention_reference)

# Absolute floor added to the "2x the naive low-precision error" criterion (for problems where the naive
# computation happens to be exact, e.g. a single key).
# float32: precision "highest" represents each operand to 2^-22 (16 x that covers unit-scale products, where the
# naive float32 error can be 0: one key); "tf32": 2^-11 per operand, and D = rowsum(dO o O) takes dO unrounded
# while dP = dO V^T takes it rounded (seen on the H100: 3e-4 with one key at head dim 128).
ERROR_FLOOR = {"float16": 1e-4, "bfloat16": 1e-3, "float32": 4e-6, "tf32": 1e-3}
# The bound of one rounding to the dtype, relative (half a unit in the last place): a kernel rounds each gradient
# once more than its terms, so on tiny problems, where the naive baseline can happen to be nearly exact, it may
# exceed 2x naive by about that much (seen on the H100: 1 query, 2 keys, bf16, 1.02x the old bar; with and without
# ALiBi alike, 450 gradients each).
ROUNDING = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "tf32": 2.0**-11}
LSE_FLOOR = 1e-4
# Precision "tf32" takes the softcap's tanh from tanh.approx.f32 (relative error up to 2^-10.987, PTX ISA), which the
# naive TF32 arithmetic does not model: a logit softcap * tanh(.) is off by up to softcap x that, and so is the lse
# (a weighted mean of the logits), and P's weights by twice that relative (seen on the H100: 1 query seeing 5 keys,
# softcap 5, lse off by 4.2e-4 where the naive TF32 arithmetic errs 1.2e-4). "highest" takes tanhf (a few ulp).
TANH_APPROX = 2.0**-10.987
# The backward recomputes P = exp(logit - lse) from the float32 lse the forward saved (flash-attn's contract), and a
# float32 lse of magnitude |lse| is itself off by up to half a unit in its last place, |lse| 2^-24, after the
# forward's and the backward's unit changes (log2 <-> natural) a few such units: P's relative error, and so each
# gradient's, is up to LSE_ROUNDINGS |lse| 2^-24. Plain float32 arithmetic, which normalises P without a saved lse,
# has no such term; it matters where |lse| is large (ALiBi over long distances, large biases: seen on the H100,
# 1025 queries, 1 key, slope 0.32: |lse| up to 330, dv off by 8.9e-4 with a largest value near 100), and is below
# the float32 floor for |lse| up to about 16. The 16-bit and TF32 floors dwarf it.
LSE_ROUNDINGS = 4
#: Test dtypes: the arrays' dtype, or for float32 inputs the precision they run at ("float32" stands for
#: precision="highest", held against plain float32 arithmetic; "tf32" for precision="tf32", held against arithmetic
#: on inputs rounded to TF32, rounded to TF32 at each step).
HOST_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "tf32": np.float32}
PRECISION = {"float16": None, "bfloat16": None, "float32": "highest", "tf32": "tf32"}
# The multiple of the naive computation's error a kernel may make. precision="highest" is held to 16x plain float32
# arithmetic, not 2x: its three TF32 products represent each operand to 2^-22 (not fp32's 2^-24) and the tensor
# cores add products into the float32 accumulator less exactly than FFMA does (cuda_src/mma_tf32.cuh; measured on
# the H100: 3e-6 where plain float32 errs 3.5e-7, head dim 64, seqlen 1024; docs/performance.md).
NAIVE_FACTOR = {"float16": 2, "bfloat16": 2, "float32": 16, "tf32": 2}


class AccuracyError(AssertionError):
    """A result outside the bound, NaN or inf where there should be numbers, or -inf rows in the wrong places. An
    AssertionError, so that tests report it as a failed check; raised explicitly, so that ``python -O`` keeps it."""


def _check(condition, message: str) -> None:
    if not condition:
        raise AccuracyError(message)


def random_array(rng, shape, dtype, scale=1.0, xp=None):
    """An array of `dtype` holding rounded standard-normal values, and the same values in float64; on the GPU
    (CuPy) unless ``xp`` says otherwise."""
    if xp is None:
        import cupy as xp

    host = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(HOST_DTYPES[dtype])
    if host.itemsize == 4:
        return xp.asarray(host), xp.asarray(host.astype(np.float64))
    dev = xp.asarray(host.view(np.uint16)).view(host.dtype)  # through the bits: CuPy cannot cast to bfloat16
    return dev, xp.asarray(host.astype(np.float64))


def allowed(naive_error: float, floor: float, dtype: str = "float16") -> float:
    """The largest acceptable error: NAIVE_FACTOR (2 but for precision "highest") times the naive computation's,
    plus the floor."""
    return NAIVE_FACTOR[dtype] * naive_error + floor


def _naive_inputs(dtype, *arrays):
    """The inputs a naive computation in ``dtype`` multiplies: as given (already in the dtype), or for "tf32"
    rounded to TF32 as the tensor cores take them."""
    if dtype != "tf32":
        return arrays
    from .reference import round_to_dtype

    return tuple(round_to_dtype(x, "tf32") for x in arrays)


def to_float64(x):
    """Float16/bfloat16/float32 array -> float64, going through the raw bits for bfloat16."""
    xp = _namespace(x, None)
    if str(x.dtype) == "bfloat16":
        bits = x.view(xp.uint16).astype(xp.uint32) << xp.uint32(16)
        return bits.view(xp.float32).astype(xp.float64)
    return x.astype(xp.float64)


def check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, **variant):
    """Raise AccuracyError unless out/lse agree with float64 attention within 2x the naive low-precision error plus
    a floor. NaN or inf anywhere in out fails; lse must be -inf exactly where the reference row sees no key.
    `variant` (window_size, softcap, alibi_slopes, bias, mask: arrays of q64's library) goes straight to the
    reference functions; k64/v64 may have fewer heads than q64 (GQA/MQA). Returns the out error."""
    return assert_within_bounds([forward_errors(out, lse, q64, k64, v64, scale, causal, dtype, **variant)], dtype)


def forward_errors(out, lse, q64, k64, v64, scale, causal, dtype, **variant):
    """The checks of check_against_reference that need no bound (finite out, lse's -inf rows, lse within 2x the
    naive error), and {"out": (error, naive error, floor)} for the bound, which assert_within_bounds applies (to
    several parts together: a packed batch's sequences)."""
    xp = _namespace(q64, None)
    ref_out, ref_lse = attention_reference(q64, k64, v64, scale, causal, xp=xp, **variant)
    lowp_out, lowp_lse = attention_naive_lowp(*_naive_inputs(dtype, q64, k64, v64), scale, causal, dtype, xp=xp,
                                              **variant)
    got = to_float64(out)
    _check(bool(xp.isfinite(got).all()), "output holds NaN/inf (unwritten or broken elements)")
    err = float(xp.abs(got - ref_out).max()) if got.size else 0.0
    base = float(xp.abs(lowp_out - ref_out).max()) if got.size else 0.0
    # The kernel rounds P before normalising it, the naive computation after: on outputs of a few elements the
    # naive error can happen to be far below one rounding (seen on the H100: 2 queries, head dim 1, bf16).
    floor = ERROR_FLOOR[dtype] + ROUNDING[dtype] * (float(xp.abs(ref_out).max()) if got.size else 0.0)
    tanh_slack = TANH_APPROX * float(variant.get("softcap") or 0.0) if dtype == "tf32" else 0.0
    floor += 2 * tanh_slack * (float(xp.abs(v64).max()) if v64.size else 0.0)
    if lse is not None:
        lse = lse.astype(xp.float64)
        empty = xp.isneginf(ref_lse)
        _check(not bool(xp.isnan(lse).any()), "lse holds NaN")
        _check(bool((xp.isneginf(lse) == empty).all()), "lse is -inf exactly for rows that see no key")
        live = ~empty
        if bool(live.any()):
            lerr = float(xp.abs(lse[live] - ref_lse[live]).max())
            lbase = float(xp.abs(lowp_lse[live] - ref_lse[live]).max())
            factor = NAIVE_FACTOR[dtype]
            _check(lerr <= factor * lbase + LSE_FLOOR + tanh_slack,
                   f"lse error {lerr:.3g} > {factor} x naive {lbase:.3g} + floor")
    return {"out": (err, base, floor)}


def assert_within_bounds(parts, dtype):
    """Each output's largest error over the parts within 2x the naive computation's largest error over the parts,
    plus the largest floor (else AccuracyError). Returns the out error, or {name: error} for gradients."""
    errors = {}
    for name in parts[0]:
        err = max(p[name][0] for p in parts)
        base = max(p[name][1] for p in parts)
        floor = max(p[name][2] for p in parts)
        _check(err <= allowed(base, floor, dtype),
               f"{name} error {err:.3g} > {NAIVE_FACTOR[dtype]} x naive {base:.3g} + {floor:.2g}")
        errors[name] = err
    return errors["out"] if list(errors) == ["out"] else errors


def check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, **variant):
    """Raise AccuracyError unless each of dq, dk, dv (and dbias, if given) is within 2x the naive low-precision
    gradient's error (plus a floor relative to the gradient's size) of the float64 analytic gradient; NaN or inf
    anywhere fails. `variant` as in check_against_reference; with GQA/MQA dk and dv have k64's shape (summed over
    each group's query heads). Returns {name: error}."""
    return assert_within_bounds([grad_errors(grads, dout64, q64, k64, v64, scale, causal, dtype, **variant)], dtype)


def grad_errors(grads, dout64, q64, k64, v64, scale, causal, dtype, out=None, **variant):
    """Finite-gradient checks, and {name: (error, naive error, floor)} for assert_within_bounds. ``out``: the
    forward output the kernels were given; the reference and the naive baseline then take D = rowsum(dO * O)
    from it as the kernels do, so that both errors exclude what that D's rounding alone causes (which every
    backward given a 16-bit output has, and which dominates dbias summed over keys: its exact value is near 0,
    and the naive baseline's other roundings can happen to cancel D's error; seen on the H200)."""
    xp = _namespace(q64, None)
    with_dbias = len(grads) == 4  # (dq, dk, dv, dbias): dbias against the reference's, in the bias's shape
    out64 = None if out is None else to_float64(out)
    refs = attention_backward_reference(dout64, q64, k64, v64, scale, causal, xp=xp, return_dbias=with_dbias,
                                        out=out64, **variant)
    lowp = attention_backward_naive_lowp(*_naive_inputs(dtype, dout64, q64, k64, v64), scale, causal, dtype, xp=xp,
                                         return_dbias=with_dbias, out=out64, **variant)
    lse_max = 0.0
    if dtype == "float32":
        _, ref_lse = attention_reference(q64, k64, v64, scale, causal, xp=xp, **variant)
        live = ref_lse[~xp.isneginf(ref_lse)]
        lse_max = float(xp.abs(live).max()) if live.size else 0.0
    errors = {}
    for name, got, ref, base in zip(("dq", "dk", "dv", "dbias"), grads, refs, lowp):
        if name == "dbias":
            _check(got.dtype == xp.float32 and got.size == ref.size, f"dbias: {got.dtype} {got.shape}, "
                                                                      f"expected float32 of {ref.shape}'s size")
            ref, base = ref.reshape(got.shape), base.reshape(got.shape)
        got = to_float64(got)
        _check(bool(xp.isfinite(got).all()), f"{name} holds NaN/inf (unwritten or broken elements)")
        if not got.size:
            errors[name] = (0.0, 0.0, 0.0)
            continue
        ref_max = float(xp.abs(ref).max())
        floor = (ERROR_FLOOR[dtype] * (1 + ref_max) + ROUNDING[dtype] * ref_max
                 + LSE_ROUNDINGS * 2.0**-24 * lse_max * ref_max)
        errors[name] = (float(xp.abs(got - ref).max()), float(xp.abs(base - ref).max()), floor)
    return errors

"""float32 inputs on a GPU (the mma_tf32 family) against the float64 reference: precision="highest" within 2x the
error of plain float32 arithmetic, precision="tf32" within 2x that of arithmetic rounded to TF32 at each step
(gpu_helpers PRECISION); forward, backward (every dQ strategy), every tile candidate, the variants and packed rows,
NaN-poisoned outputs."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import GPU_SKIP_REASON, requires_gpu
from cupyflash._accuracy import PRECISION, check_against_reference, check_grads_against_reference
from gpu_helpers import make_bias, make_mask, make_problem
from test_variants_gpu import AWKWARD_SEQLENS, alibi, run_backward, run_forward

import cupyflash as cf
from cupyflash.configs import KERNEL_HEAD_DIMS

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

MODES = ["float32", "tf32"]  # precision "highest" and "tf32" (gpu_helpers PRECISION)


# run_forward and run_backward take the precision from the test dtype (gpu_helpers PRECISION).
def forward(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, mode, causal, **variant):
    return run_forward(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, mode, causal, **variant)


def backward(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, mode, causal, mode_dq="default",
             **variant):
    return run_backward(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, mode, causal, mode=mode_dq,
                        **variant)


@pytest.mark.parametrize("head_dim", KERNEL_HEAD_DIMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("causal", [False, True])
def test_every_head_dim(head_dim, mode, causal):
    forward(head_dim, 2, 257, 190, 3, 3, head_dim, mode, causal)
    backward(head_dim + 1, 1, 190, 257, 2, 2, head_dim, mode, causal)


@pytest.mark.parametrize("seqlen", AWKWARD_SEQLENS)
@pytest.mark.parametrize("mode", MODES)
def test_awkward_lengths(seqlen, mode):
    forward(seqlen, 1, seqlen, seqlen + 3, 2, 1, 64, mode, True)
    backward(seqlen, 1, seqlen, max(seqlen - 5, 1), 2, 1, 128, mode, False, mode_dq="atomic")


def _candidates(kind):
    """(kernel head dim, tile, the test modes whose table entries include it): a tile may serve one precision
    only (When avoid "tf32")."""
    from cupyflash._device import device_limits
    from cupyflash.configs import candidates
    from cupyflash.problem import Variant

    limits = device_limits(0)
    out = {}
    for kd, mode in itertools.product(KERNEL_HEAD_DIMS, MODES):
        for c in candidates(kind, limits, kd, Variant("float32", precision=PRECISION[mode])):
            out.setdefault((kd, c), []).append(mode)
    return [(kd, c, modes) for (kd, c), modes in out.items()]


def _causal_if_served(kind, kd, config, mode):
    """True where the tile serves causal problems (the band mask) in `mode`: a table entry may avoid the band mask
    (When avoid "band"), and then its causal turn runs non-causal."""
    from cupyflash._device import device_limits
    from cupyflash.configs import candidates
    from cupyflash.problem import Variant

    return config in candidates(kind, device_limits(0), kd, Variant("float32", mask="band", precision=PRECISION[mode]))


# Without a GPU the module is skipped; with one, a failure to list candidates must fail loudly.
FWD_CANDIDATES = [] if GPU_SKIP_REASON else _candidates("fwd")
BWD_CANDIDATES = [] if GPU_SKIP_REASON else _candidates("bwd")
DQ_CANDIDATES = [] if GPU_SKIP_REASON else _candidates("bwd_dq")
IDS = {"fwd": [f"d{kd}-{c}" for kd, c, _ in FWD_CANDIDATES], "bwd": [f"d{kd}-{c}" for kd, c, _ in BWD_CANDIDATES],
       "bwd_dq": [f"d{kd}-{c}" for kd, c, _ in DQ_CANDIDATES]}


# Each tile runs the padded and the full head-dim width, in turn in the modes it serves.
@pytest.mark.parametrize("kd,config,modes", FWD_CANDIDATES, ids=IDS["fwd"])
def test_every_forward_candidate(kd, config, modes):
    for i, head_dim in enumerate((kd - 8, kd)):
        mode = modes[i % len(modes)]
        (q, k, v, _), (q64, k64, v64, _) = make_problem(kd + i, 1, config.block_m * 2 + 5, config.block_n * 3 + 7,
                                                        2, 2, head_dim, mode)
        causal = i == 1 and _causal_if_served("fwd", kd, config, mode)
        out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision=PRECISION[mode],
                                      config=config)
        check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(head_dim), causal, mode)


@pytest.mark.parametrize("kd,config,modes", BWD_CANDIDATES, ids=IDS["bwd"])
def test_every_backward_candidate(kd, config, modes):
    for i, head_dim in enumerate((kd - 8, kd)):
        mode = modes[i % len(modes)]
        (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(kd + i, 1, config.block_m * 2 + 5,
                                                                config.block_n * 2 + 7, 2, 2, head_dim, mode)
        causal = i == 1 and _causal_if_served("bwd", kd, config, mode)
        _check_backward(q, k, v, dout, q64, k64, v64, dout64, mode, causal, config=config, atomic_dq=bool(i))


@pytest.mark.parametrize("kd,config,modes", DQ_CANDIDATES, ids=IDS["bwd_dq"])
def test_every_dq_candidate(kd, config, modes):
    head_dim = kd - 8
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(kd, 1, config.block_m * 2 + 5, config.block_n * 3 + 7,
                                                            2, 2, head_dim, modes[0])
    _check_backward(q, k, v, dout, q64, k64, v64, dout64, modes[0], True, dq_config=config, deterministic=True)


def _check_backward(q, k, v, dout, q64, k64, v64, dout64, mode, causal, **kw):
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision=PRECISION[mode])
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, precision=PRECISION[mode], **kw)
    for g, x in zip(grads, (q, k, v)):
        assert g.dtype == x.dtype == np.float32 and g.shape == x.shape
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(q.shape[3]), causal, mode)


@pytest.mark.parametrize("layout", ["fresh", "given", "strided"])
def test_atomic_dq_adds_into_the_callers_buffer_where_it_can(layout):
    # float32 with atomic dQ adds into dq itself where it has the accumulator's layout (contiguous rows; the
    # preprocess kernel zeroes it first, so a NaN-poisoned buffer must come back right); a strided one is written
    # from the accumulator by the conversion kernel
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(7, 2, 130, 97, 2, 2, 64, "tf32")
    out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True, precision="tf32")
    dq = None
    if layout == "given":
        dq = cupy.full(q.shape, cupy.nan, cupy.float32)
    elif layout == "strided":
        dq = cupy.full(q.shape[:3] + (2 * q.shape[3],), cupy.nan, cupy.float32)[..., :q.shape[3]]
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True, precision="tf32", atomic_dq=True, dq=dq)
    if dq is not None:
        assert grads[0].data.ptr == dq.data.ptr
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(64), True, "tf32")


seqlens = st.one_of(st.sampled_from(AWKWARD_SEQLENS), st.integers(1, 300))
# Head dims of two kernel head dims (64, 128; odd and full widths), so that the variants' kernels are few enough to
# precompile (python -m cupyflash.precompile --dtypes float32 --variants --bias none --head-dims 64 128).
head_dims = st.sampled_from([33, 59, 64, 97, 111, 128])
sides = st.one_of(st.just(-1), st.integers(0, 8), st.integers(0, 400))


@st.composite
def problems(draw):
    nheads_k = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 4]))
    batch = draw(st.integers(1, 2))
    alibi_kind = draw(st.sampled_from([None, "heads", "batch_heads"]))
    seqlen_q, seqlen_k = draw(seqlens), draw(seqlens)
    while batch * nheads_k * group * seqlen_q * seqlen_k > 2**22 and seqlen_q > 64:
        seqlen_q //= 2
    return dict(seed=draw(st.integers(0, 2**32 - 1)), batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                nheads=nheads_k * group, nheads_k=nheads_k, head_dim=draw(head_dims), mode=draw(st.sampled_from(MODES)),
                causal=draw(st.booleans()), window_size=(draw(sides), draw(sides)),
                softcap=draw(st.sampled_from([0.0, 0.0, 5.0])), alibi_slopes=alibi(alibi_kind, batch, nheads_k * group))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_forward_variants(p):
    forward(**p)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), dq=st.sampled_from(["default", "deterministic", "atomic"]))
def test_backward_variants(p, dq):
    backward(**p, mode_dq=dq)


def test_backward_of_queries_far_from_their_one_key():
    # hypothesis's find in the nineteenth session: ALiBi puts the far queries' logits and lse near -330, where P
    # recomputed from the saved float32 lse errs by about 2e-5, relative (cupyflash._accuracy.LSE_ROUNDINGS)
    import cupy

    backward(0, 1, 1025, 1, 1, 1, 33, "float32", False, alibi_slopes=cupy.asarray([0.32211122], dtype=cupy.float32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias_dtype", ["float32", "bfloat16"])
def test_bias_and_mask(mode, bias_dtype):

    rng = np.random.default_rng(11)
    batch, sq, sk, h = 2, 97, 130, 4
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(12, batch, sq, sk, h, 2, 64, mode)
    full = (batch, h, sq, sk)
    bias, b64 = make_bias(rng, full, (True, False, False, False), bias_dtype, "contiguous", hidden=0.05)
    mask, m = make_mask(rng, full, (False, True, True, False), "contiguous", 0.8)
    kw = dict(causal=True, precision=PRECISION[mode])
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, bias=bias, mask=mask, **kw)
    check_against_reference(out, lse, q64, k64, v64, 1 / 8, True, mode, bias=b64, mask=m)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, bias=bias, mask=mask, return_dbias=True, **kw)
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / 8, True, mode, bias=b64, mask=m)


@pytest.mark.parametrize("mode", MODES)
def test_packed_rows(mode):
    import cupy

    from cupyflash.reference import attention_varlen_reference

    lengths_q, lengths_k = [0, 1, 17, 130], [5, 0, 33, 97]
    rng = np.random.default_rng(3)
    cu_q = cupy.asarray(np.concatenate([[0], np.cumsum(lengths_q)]).astype(np.int32))
    cu_k = cupy.asarray(np.concatenate([[0], np.cumsum(lengths_k)]).astype(np.int32))
    q, k, v = (cupy.asarray(rng.standard_normal((n, 4, 64), dtype=np.float32))
               for n in (sum(lengths_q), sum(lengths_k), sum(lengths_k)))
    out, lse = cf.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True,
                                         return_lse=True, precision=PRECISION[mode])
    ref, ref_lse = attention_varlen_reference(q.astype(cupy.float64), k.astype(cupy.float64),
                                              v.astype(cupy.float64), cu_q, cu_k, causal=True, xp=cupy)
    tol = 1e-5 if mode == "float32" else 5e-3
    assert bool(cupy.isfinite(out).all())
    assert float(cupy.abs(out - ref).max()) < tol
    live = ~cupy.isneginf(ref_lse)
    assert bool((cupy.isneginf(lse) == ~live).all())
    assert float(cupy.abs(lse[live] - ref_lse[live]).max()) < tol


@pytest.mark.parametrize("family", [None, "mma_tf32"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("value, rounded", [
    (1 + 2.0 ** -11 + 2.0 ** -12, 1 + 2.0 ** -10),  # above the half: rounds up, where truncation gives 1
    (1 + 2.0 ** -11, 1.0),  # a tie with an even last kept bit: stays at 1, where ties away from zero go up
])
def test_tf32_operands_reach_the_products_rounded(family, head_dim, value, rounded):
    # Every input holds ``value``. All scores are equal, so P is uniform (1 in the forward, 1/64 in the backward, 64
    # keys, up to the rounding of the scale-and-subtract) and out = V's value, dV = 64 x (1/64) x dO's value, each as
    # the products received it: ``rounded`` (to nearest, ties to even, as the staging kernels and a TFLOAT32 bulk
    # copy round) where the operands were rounded; 1 where a path handed them over unrounded (the tensor cores
    # truncate: mma_tf32.cuh), 1 + 2^-10 at the tie where a path rounded ties away from zero. The tolerance (2^-16,
    # a few float32 ulps of the normalization) is 64 times smaller than those differences. Q's and K's rounding
    # shows in lse. "highest" carries the value itself (to 2^-22).
    import cupy

    import cupyflash as cf

    c, rounded = np.float32(value), float(rounded)
    q, k, v, dout = (cupy.full((1, 64, 2, head_dim), c, cupy.float32) for _ in range(4))
    config = None if family is None else cf.select_config_for(q, k, v, precision="tf32", family=family)
    out, lse = cf.flash_attn_func(q, k, v, precision="tf32", return_lse=True, config=config)
    assert float(cupy.abs(out - rounded).max()) < 2.0 ** -16, float(cupy.abs(out - rounded).max())
    # lse = head_dim * r^2 * scale + ln 64, r the value the products got
    expected = head_dim * rounded * rounded / math.sqrt(head_dim) + math.log(64)
    assert float(cupy.abs(lse - expected).max()) < 1e-4, (float(lse.max()), expected)
    for atomic_dq in (False, True):  # K and V staged rounded for the dQ kernel; else rounded by the dK/dV kernel
        dq, dk, dv = cf.flash_attn_backward(dout, q, k, v, out, lse, precision="tf32", atomic_dq=atomic_dq)
        assert float(cupy.abs(dv - rounded).max()) < 2.0 ** -16, (atomic_dq, float(cupy.abs(dv - rounded).max()))
        assert float(cupy.abs(dq).max()) < 1e-4 and float(cupy.abs(dk).max()) < 1e-4  # dS = P (dP - D) = 0
    highest = cf.flash_attn_func(q, k, v)
    assert float(cupy.abs(highest - c).max()) < 2.0 ** -20


def test_highest_is_more_accurate_than_tf32():
    import cupy

    (q, k, v, _), (q64, k64, v64, _) = make_problem(1, 2, 512, 512, 4, 4, 128, "float32")
    from cupyflash.reference import attention_reference

    ref, _ = attention_reference(q64, k64, v64, xp=cupy)
    errors = {p: float(cupy.abs(cf.flash_attn_func(q, k, v, precision=p) - ref).max()) for p in ("highest", "tf32")}
    assert errors["highest"] * 50 < errors["tf32"], errors


def test_precision_errors_before_launch():
    import cupy

    (q, k, v, _), _ = make_problem(1, 1, 16, 16, 2, 2, 64, "float32")
    (h, hk, hv, _), _ = make_problem(1, 1, 16, 16, 2, 2, 64, "float16")
    with pytest.raises(ValueError, match="precision must be one of 'highest', 'tf32'"):
        cf.flash_attn_func(q, k, v, precision="fp32")
    with pytest.raises(ValueError, match="precision applies to float32 inputs"):
        cf.flash_attn_func(h, hk, hv, precision="highest")
    with pytest.raises(TypeError, match="q, k, v must share one dtype"):
        cf.flash_attn_func(q, hk, hv)
    dq = cupy.full(q.shape, 7, q.dtype)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        cf.flash_attn_backward(out, q, k, v, out, lse, precision="half", dq=dq)
    assert bool((dq == 7).all())


# "highest" (mode float32) splits every shared operand in two (hi and lo tiles): twice the shared memory, which fits
# the forward's tiles at both head dims (one consumer warpgroup at 128) and the dK/dV kernel's (16 queries a step at
# 128).
WGMMA_HEAD_DIMS = [("tf32", 40), ("tf32", 64), ("tf32", 100), ("tf32", 128), ("float32", 40), ("float32", 64),
                   ("float32", 100), ("float32", 128)]
WGMMA_FWD_HEAD_DIMS = WGMMA_HEAD_DIMS


@pytest.mark.parametrize("mode, head_dim", WGMMA_FWD_HEAD_DIMS)
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(97, 1), (130, 97), (257, 300)])
@pytest.mark.parametrize("causal", [False, True])
def test_tf32_wgmma_forward(mode, head_dim, seqlen_q, seqlen_k, causal):
    # float32 at head dims up to 128 on Hopper: TF32 wgmma on staged operands ("tf32": Q
    # and K rounded, by their bulk copies or staged; "highest": Q and K as they are, split by the producer's threads
    # that copy them), V transposed with its keys in P's register order and padded to 32
    # (cupyflash/_launch.py Tf32Staging): key counts that are not a multiple of 8 or 32, head dims padded to the
    # kernel's, GQA, softcap and ALiBi
    from cupyflash._device import device_limits
    from cupyflash.families import FAMILIES, WGMMA_TF32
    from cupyflash.forward import plan_for

    (q, k, v, _), _ = make_problem(0, 1, seqlen_q, seqlen_k, 4, 2, head_dim, mode)
    plan = plan_for(q, k, v, causal=causal, precision=PRECISION[mode])
    if device_limits(0).compute_capability == 90 and WGMMA_TF32 in FAMILIES:
        assert plan.config.family == "wgmma_tf32", plan.config
    forward(head_dim + seqlen_k, 2, seqlen_q, seqlen_k, 4, 2, head_dim, mode, causal)
    forward(head_dim + seqlen_q, 1, seqlen_q, seqlen_k, 4, 4, head_dim, mode, causal, softcap=20.0,
            alibi_slopes=alibi("heads", 1, 4))


@pytest.mark.parametrize("mode, head_dim", WGMMA_HEAD_DIMS)
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(97, 1), (130, 97), (257, 300)])
@pytest.mark.parametrize("causal", [False, True])
def test_tf32_wgmma_backward(mode, head_dim, seqlen_q, seqlen_k, causal):
    # float32 at head dims up to 128 ("tf32") or 64 ("highest": three passes a product) on Hopper: the dK/dV kernel's
    # S^T, dP^T, dV^T and dK^T by TF32 wgmma on swizzled tiles, dQ on mma.sync reading them (families.py
    # WgmmaTf32Family); query and key counts that cut its tiles, padded head dims, GQA (with group splits: partial
    # dK, dV), both dQ paths, a window, softcap and ALiBi
    from cupyflash._device import device_limits
    from cupyflash.configs import select_config
    from cupyflash.families import FAMILIES, WGMMA_TF32
    from cupyflash.problem import Variant

    if device_limits(0).compute_capability == 90 and WGMMA_TF32 in FAMILIES:
        variant = Variant("float32", precision=PRECISION[mode])
        picked = select_config("bwd", device_limits(0), head_dim, variant=variant)
        assert picked.family == "wgmma_tf32", picked
    for mode_dq in ("atomic", "deterministic"):
        backward(head_dim + seqlen_k, 2, seqlen_q, seqlen_k, 4, 2, head_dim, mode, causal, mode_dq=mode_dq)
    backward(head_dim + seqlen_q, 1, seqlen_q, seqlen_k, 4, 4, head_dim, mode, causal, mode_dq="atomic",
             window_size=(40, 0 if causal else 7), softcap=20.0, alibi_slopes=alibi("heads", 1, 4))


# The multiple of plain float32's error "highest" keeps to on long rows (out, lse and dQ sum over 2048 keys, dK and dV
# over 2048 queries; S and dP over the head dim), by head dim and output. Issue 9's bar is 2x. The products on TF32
# wgmma (the forward and the dK/dV kernel at 64 and 128) sum each tile fresh; mma_tf32's 16x128 dK/dV tile, the pick
# at 128 before, erred 1.5-3.9x with its step sums in column slices and 8-20x while it summed in place (H100,
# twenty-fifth session). mma_tf32 (head dims 96-256, measured at 96, 160 and 256) also sums the small terms of S and
# dP apart (mma_tf32.cuh run_split): before that, lse erred 2.0-6.6x and dQ up to 6.5x there (twenty-eighth session,
# docs/measurements/2026-11-27-h100-s28-small-terms.md); at 256 out, lse, dQ, dK and dV still reach 2.0-2.4x. At 32
# (mma_tf32 for every variant, its score tiles too large for run_split) 0.6-1.3x at 2048 (twenty-ninth session).
LONG_SUM_FACTOR = {32: {"out": 2, "lse": 2, "dq": 2, "dk": 2, "dv": 2},
                   64: {"out": 2, "dk": 2, "dv": 2}, 128: {"out": 2, "dk": 2, "dv": 2},
                   96: {"out": 2, "lse": 2, "dq": 2, "dk": 2, "dv": 2},
                   160: {"out": 2, "lse": 2.5, "dq": 2, "dk": 2, "dv": 2},
                   256: {"out": 3, "lse": 3, "dq": 2.5, "dk": 3, "dv": 3}}


@pytest.mark.parametrize("head_dim", sorted(LONG_SUM_FACTOR))
def test_highest_sums_long_sequences_near_plain_float32(head_dim):
    """Precision "highest" against plain float32 where the kernels' sums are longest: out, lse and dQ over 2048 keys,
    dK and dV over 2048 queries, unit-scale inputs, no floor beyond a rounding of the largest value (the suite's 4e-6
    floor is itself ~10x plain float32's error there). The tensor cores' additions into a float32 accumulator are
    less exact than FFMA's, so each tile's product is summed fresh and added (warp_gemm.cuh accumulate), and on
    mma_tf32 the small terms of the products over the head dim apart (mma_tf32.cuh run_split); the suite's bounds
    let pass what erred 8-20x plain float32 (LONG_SUM_FACTOR's comment)."""
    import cupy

    from cupyflash.reference import (attention_backward_naive_lowp, attention_backward_reference,
                                     attention_naive_lowp, attention_reference)

    rng = cupy.random.default_rng(head_dim)
    q, k, v, do = (rng.standard_normal((1, 2048, 2, head_dim), dtype=cupy.float32) for _ in range(4))
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, precision="highest")
    dq, dk, dv = cf.flash_attn_backward(do, q, k, v, out, lse, precision="highest")
    q64, k64, v64, do64, out64 = (x.astype(cupy.float64) for x in (q, k, v, do, out))
    ref_out, ref_lse = attention_reference(q64, k64, v64)
    plain_out, plain_lse = attention_naive_lowp(q64, k64, v64, None, False, "float32")
    ref_grads = attention_backward_reference(do64, q64, k64, v64, out=out64)
    plain_grads = attention_backward_naive_lowp(do64, q64, k64, v64, None, False, "float32", out=out64)
    for name, got, ref, plain in (("out", out64, ref_out, plain_out), ("lse", lse, ref_lse, plain_lse),
                                  *zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads, plain_grads)):
        if name not in LONG_SUM_FACTOR[head_dim]:
            continue
        factor = LONG_SUM_FACTOR[head_dim][name]
        err = float(cupy.abs(got.astype(cupy.float64) - ref).max())
        base = float(cupy.abs(plain - ref).max())
        bound = factor * base + 2.0**-24 * float(cupy.abs(ref).max())
        print(f"head dim {head_dim} {name}: error {err:.3g}, plain float32's {base:.3g} ({err / base:.2f}x)")
        assert err <= bound, f"{name}: error {err:.3g} > {factor} x plain float32's + one rounding ({bound:.3g})"

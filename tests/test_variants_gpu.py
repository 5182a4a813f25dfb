"""Variants on a GPU against the float64 reference: grouped-query heads, sliding windows, softcap, ALiBi, head dims
that are not multiples of 8, and their combinations; forward, backward and VJP, NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from cupyflash._accuracy import (PRECISION, check_against_reference, check_grads_against_reference, random_array,
                                 to_float64)
from gpu_helpers import backward_mode, make_problem

import cupyflash as cf

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]
AWKWARD_SEQLENS = [1, 17, 97, 1025]
ODD_HEAD_DIMS = [1, 12, 59, 111, 200]


def alibi(kind, batch, nheads, seed=0):
    import cupy

    if kind is None:
        return None
    rng = np.random.default_rng(seed)
    shape = (nheads,) if kind == "heads" else (batch, nheads)
    return cupy.asarray(rng.uniform(0.01, 0.5, shape).astype(np.float32))


def run_forward(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, causal, **variant):
    (q, k, v, _), (q64, k64, v64, _) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim,
                                                    dtype)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision=PRECISION[dtype], **variant)
    assert out.shape == q.shape and out.dtype == q.dtype and out.flags.c_contiguous
    assert lse.shape == (batch, nheads, seqlen_q)
    return check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(head_dim), causal, dtype, **variant)


def run_backward(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, causal, mode="default",
                 kv_splits=None, **variant):
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    kw = dict(backward_mode(mode), precision=PRECISION[dtype])
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision=kw["precision"], **variant)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, kv_splits=kv_splits, **variant, **kw)
    for g, x in zip(grads, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype
    return check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(head_dim), causal, dtype,
                                         out=out, **variant)  # D from out, as the kernels take it


seqlens = st.one_of(st.sampled_from(AWKWARD_SEQLENS), st.integers(1, 300))
head_dims = st.one_of(st.sampled_from(ODD_HEAD_DIMS), st.integers(1, 32).map(lambda i: 8 * i), st.integers(1, 256))
sides = st.one_of(st.just(-1), st.integers(0, 8), st.integers(0, 400))


@st.composite
def problems(draw):
    nheads_k = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 4, 8]))
    batch = draw(st.integers(1, 2))
    alibi_kind = draw(st.sampled_from([None, "heads", "batch_heads"]))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), batch=batch, seqlen_q=draw(seqlens), seqlen_k=draw(seqlens),
                nheads=nheads_k * group, nheads_k=nheads_k, head_dim=draw(head_dims),
                dtype=draw(st.sampled_from(DTYPES)),
                causal=draw(st.booleans()), window_size=(draw(sides), draw(sides)),
                softcap=draw(st.sampled_from([0.0, 0.0, 5.0, 30.0])),
                alibi_slopes=alibi(alibi_kind, batch, nheads_k * group))


def _shrink(p, budget):
    while p["batch"] * p["nheads"] * p["seqlen_q"] * p["seqlen_k"] > budget and p["seqlen_q"] > 64:
        p["seqlen_q"] //= 2
    return p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_forward_variants_match_float64(p):
    run_forward(**_shrink(p, 2**24))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), mode=st.sampled_from(["default", "deterministic", "atomic"]), data=st.data())
def test_backward_variants_match_float64(p, mode, data):
    group = p["nheads"] // p["nheads_k"]
    splits = data.draw(st.sampled_from([None] + [s for s in (1, 2, 4, 8) if group % s == 0]), label="kv_splits")
    run_backward(**_shrink(p, 2**23), mode=mode, kv_splits=splits)


@pytest.mark.parametrize("head_dim", ODD_HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dims_that_are_not_multiples_of_8(head_dim, dtype):
    run_forward(head_dim, 2, 97, 130, 4, 2, head_dim, dtype, True)
    run_backward(head_dim, 2, 97, 130, 4, 2, head_dim, dtype, False, softcap=10.0)


@pytest.mark.parametrize("nheads, nheads_k", [(8, 8), (8, 4), (8, 2), (8, 1), (32, 8)])
@pytest.mark.parametrize("mode", ["default", "deterministic", "atomic"])
def test_grouped_query_attention(nheads, nheads_k, mode):
    run_forward(nheads_k, 1, 257, 300, nheads, nheads_k, 64, "bfloat16", True)
    for splits in dict.fromkeys((None, 1, 2, nheads // nheads_k)):  # auto, one block per group, split 2 and full
        if (nheads // nheads_k) % (splits or 1) == 0:
            run_backward(nheads_k, 1, 257, 300, nheads, nheads_k, 128, "float16", True, mode=mode, kv_splits=splits)


def test_kv_splits_must_divide_the_group():
    import cupy

    (q, k, v, dout), _ = make_problem(3, 1, 64, 64, 8, 2, 64, "float16")
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    for bad in (0, 3, 8, 2.0, True):
        dq = cupy.full(q.shape, 7, q.dtype)
        with pytest.raises(ValueError, match="kv_splits must be a positive int dividing nheads // nheads_k = 4"):
            cf.flash_attn_backward(dout, q, k, v, out, lse, kv_splits=bad, dq=dq)
        assert bool((dq == 7).all())


@pytest.mark.parametrize("window", [(0, 0), (1, 0), (0, 5), (16, 16), (100, -1), (-1, 100), (1000, 1000)])
@pytest.mark.parametrize("causal", [False, True])
def test_windows(window, causal):
    run_forward(3, 2, 300, 257, 2, 1, 64, "float16", causal, window_size=window)
    run_backward(4, 1, 300, 257, 2, 2, 96, "bfloat16", causal, window_size=window)


@pytest.mark.parametrize("softcap", [1.0, 30.0])
@pytest.mark.parametrize("alibi_kind", [None, "heads", "batch_heads"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_and_alibi(softcap, alibi_kind, dtype):
    slopes = alibi(alibi_kind, 2, 4)
    run_forward(5, 2, 200, 333, 4, 2, 128, dtype, True, softcap=softcap, alibi_slopes=slopes)
    run_backward(6, 2, 200, 333, 4, 2, 64, dtype, False, softcap=softcap, alibi_slopes=slopes)
    run_forward(7, 2, 129, 64, 4, 4, 256, dtype, False, alibi_slopes=slopes)


def test_everything_at_once():
    kw = dict(window_size=(64, 0), softcap=20.0, alibi_slopes=alibi("batch_heads", 2, 8))
    for mode in ("default", "deterministic", "atomic"):
        run_forward(8, 2, 1025, 1025, 8, 2, 59, "bfloat16", True, **kw)
        run_backward(9, 2, 1025, 1025, 8, 2, 59, "bfloat16", True, mode=mode, **kw)


@pytest.mark.parametrize("seqlen_q, seqlen_k, causal, window", [
    (300, 50, True, (-1, -1)), (200, 200, False, (0, 0)), (64, 300, False, (2, -1)), (300, 10, False, (-1, 0))])
def test_rows_that_see_no_key(seqlen_q, seqlen_k, causal, window):
    import cupy

    (q, k, v, dout), _ = make_problem(10, 1, seqlen_q, seqlen_k, 4, 2, 64, "float16")
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, window_size=window, return_lse=True)
    probs = cf.flash_attn_func(q, k, v, causal=causal, window_size=window, return_attn_probs=True)[2]
    empty = probs.sum(axis=-1) == 0  # (batch, nheads, seqlen_q)
    assert bool(cupy.isneginf(lse[empty]).all()) and bool(cupy.isfinite(lse[~empty]).all())
    assert bool((out.transpose(0, 2, 1, 3)[empty] == 0).all())
    dq, dk, dv = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, window_size=window)
    assert all(bool(cupy.isfinite(to_float64(g)).all()) for g in (dq, dk, dv))
    assert bool((dq.transpose(0, 2, 1, 3)[empty] == 0).all())
    run_backward(11, 1, seqlen_q, seqlen_k, 4, 2, 64, "float16", causal, window_size=window)


def test_keys_outside_the_window_are_skipped_not_masked():
    """NaN in keys no query can see: a kernel that loaded and masked them would produce 0 * NaN = NaN."""
    import cupy

    (q, k, v, dout), _ = make_problem(12, 1, 128, 2048, 2, 2, 64, "bfloat16")
    k[:, :1024] = cupy.nan
    v[:, :1024] = cupy.nan  # query i sees keys i + 1920 - 64 .. i + 1920: none below 1856
    out, lse = cf.flash_attn_func(q, k, v, causal=True, window_size=(64, 0), return_lse=True)
    assert bool(cupy.isfinite(to_float64(out)).all())
    for kw in ({}, {"deterministic": True}, {"atomic_dq": True}):
        dq, dk, dv = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True, window_size=(64, 0), **kw)
        assert bool(cupy.isfinite(to_float64(dq)).all())
        assert bool((to_float64(dk[:, :1024]) == 0).all()) and bool((to_float64(dv[:, :1024]) == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_is_bitwise_reproducible_with_gqa(dtype):
    import cupy

    (q, k, v, dout), _ = make_problem(13, 2, 1000, 777, 8, 2, 128, dtype)
    kw = dict(causal=True, window_size=(300, 0), softcap=15.0)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, **kw)
    for splits in (1, 4):  # the group summed in one block, and over four blocks' fp32 partials
        first = cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True, kv_splits=splits, **kw)
        for _ in range(3):
            again = cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True, kv_splits=splits, **kw)
            for a, b in zip(first, again):
                assert bool(cupy.array_equal(a.view(cupy.uint16), b.view(cupy.uint16)))


def test_vjp_takes_the_variants():
    import cupy

    slopes = alibi("heads", 1, 4)
    kw = dict(causal=True, window_size=(50, 0), softcap=8.0, alibi_slopes=slopes)
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(14, 1, 257, 257, 4, 1, 72, "bfloat16")
    out, vjp = cf.flash_attn_vjp(q, k, v, deterministic=True, **kw)
    grads = vjp(dout)
    variant = {n: kw[n] for n in ("window_size", "softcap", "alibi_slopes")}
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(72), True, "bfloat16", **variant)
    assert bool(cupy.array_equal(out.view(cupy.uint16), cf.flash_attn_func(q, k, v, **kw).view(cupy.uint16)))


def test_flash_attn_positional_signature_and_attn_probs():
    """flash-attn's positional order: q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
    alibi_slopes, deterministic, return_attn_probs."""
    import cupy

    (q, k, v, _), (q64, k64, v64, _) = make_problem(15, 1, 33, 40, 2, 1, 32, "float16")
    slopes = alibi("heads", 1, 2)
    out, lse, probs = cf.flash_attn_func(q, k, v, 0.0, 0.3, True, (10, 0), 5.0, slopes, False, True)
    check_against_reference(out, lse, q64, k64, v64, 0.3, True, "float16", window_size=(10, 0), softcap=5.0,
                            alibi_slopes=slopes)
    assert probs.shape == (1, 2, 33, 40) and probs.dtype == cupy.float32
    row_sums = probs.sum(axis=-1)
    assert bool(cupy.allclose(row_sums[row_sums > 0], 1, atol=1e-5))
    # probs @ v reproduces out (v shared by both query heads)
    again = cupy.einsum("bhqk,bkd->bqhd", probs, v[:, :, 0].astype(cupy.float32))
    assert float(cupy.abs(again - out.astype(cupy.float32)).max()) < 2e-3


def test_bad_variant_inputs_raise_before_anything_is_written():
    import cupy

    (q, k, v, dout), _ = make_problem(17, 2, 8, 8, 4, 2, 64, "float16")
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    dq = cupy.full(q.shape, 3, q.dtype)
    bad = [({"window_size": (-2, 0)}, ValueError), ({"softcap": -1.0}, ValueError),
           ({"alibi_slopes": cupy.ones(3, cupy.float32)}, ValueError),
           ({"alibi_slopes": cupy.ones(4, cupy.float64)}, TypeError),
           ({"alibi_slopes": np.ones(4, np.float32)}, TypeError)]
    for kw, exc in bad:
        with pytest.raises(exc):
            cf.flash_attn_func(q, k, v, **kw)
        with pytest.raises(exc):
            cf.flash_attn_backward(dout, q, k, v, out, lse, dq=dq, **kw)
    with pytest.raises(ValueError, match="multiple of nheads"):
        cf.flash_attn_func(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))
    with pytest.raises(ValueError, match="between 1 and 256"):
        cf.flash_attn_func(*(cupy.zeros((1, 4, 2, 264), cupy.float16) for _ in range(3)))
    assert bool((dq == 3).all())  # nothing was written


def test_repeat_calls_reuse_the_plan_and_see_new_data():
    """The plan cache keys on shapes, strides and alignment, never on data: new values give new results."""
    import cupy

    (q, k, v, _), (q64, k64, v64, _) = make_problem(18, 1, 100, 100, 2, 2, 64, "bfloat16")
    first = cf.flash_attn_func(q, k, v, causal=True)
    (q2, k2, v2, _), (q64b, k64b, v64b, _) = make_problem(19, 1, 100, 100, 2, 2, 64, "bfloat16")
    out, lse = cf.flash_attn_func(q2, k2, v2, causal=True, return_lse=True)
    check_against_reference(out, lse, q64b, k64b, v64b, 1 / 8, True, "bfloat16")
    assert not bool(cupy.array_equal(first.view(cupy.uint16), out.view(cupy.uint16)))
    # the same shapes with a misaligned view take another plan (a staged copy), still correct
    big, big64 = random_array(np.random.default_rng(20), (1, 100, 2, 72), "bfloat16")
    out, lse = cf.flash_attn_func(big[..., 4:68], k, v, causal=True, return_lse=True)
    check_against_reference(out, lse, big64[..., 4:68], k64, v64, 1 / 8, True, "bfloat16")


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(300, 2500), (2500, 300), (2048, 2048)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_alibi_far_from_the_diagonal(seqlen_q, seqlen_k, dtype):
    # Key tiles wholly on one side of a warp's rows take ALiBi as a key term and a row offset (score_mod.cuh
    # apply_score_mod_rows): offsets up to slope * 2500 here, queries that see only distant keys (2500 x 300: the
    # first 2200 rows are at least 1 key away from any, most of them hundreds), slopes from 2^-8 to 1
    import cupy

    slopes = cupy.asarray([1.0, 0.5, 2.0**-4, 2.0**-8], dtype=cupy.float32)
    for causal in (False, True):
        run_forward(12, 1, seqlen_q, seqlen_k, 4, 2, 64, dtype, causal, alibi_slopes=slopes)
    run_forward(13, 1, seqlen_q, seqlen_k, 4, 4, 128, dtype, False, alibi_slopes=slopes, softcap=30.0)
    run_backward(14, 1, seqlen_q, seqlen_k, 4, 2, 64, dtype, False, alibi_slopes=slopes)

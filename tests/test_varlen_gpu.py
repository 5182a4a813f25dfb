"""flash_attn_varlen_func on a GPU: every packed sequence against the float64 reference, NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from cupyflash._accuracy import assert_within_bounds, forward_errors, grad_errors, random_array, to_float64
from gpu_helpers import backward_mode

import cupyflash as cf

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]


def offsets(lengths):
    import cupy

    return cupy.asarray(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


def run_varlen(seed, lens_q, lens_k, nheads, nheads_k, head_dim, dtype, causal, alibi=None, mode=None,
               **variant):
    """The packed forward (and, with mode "default", "deterministic" or "atomic", the backward) against the
    float64 reference of each sequence on its own."""
    import cupy

    rng = np.random.default_rng(seed)
    q, q64 = random_array(rng, (sum(lens_q), nheads, head_dim), dtype)
    k, k64 = random_array(rng, (sum(lens_k), nheads_k, head_dim), dtype)
    v, v64 = random_array(rng, (sum(lens_k), nheads_k, head_dim), dtype)
    slopes = {None: None, "heads": (nheads,), "sequences": (len(lens_q), nheads)}[alibi]
    if slopes is not None:
        slopes = cupy.asarray(rng.uniform(0.01, 0.5, slopes).astype(np.float32))
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    out, lse = cf.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                         alibi_slopes=slopes, return_lse=True, **variant)
    assert out.shape == q.shape and out.dtype == q.dtype and out.flags.c_contiguous
    assert lse.shape == (nheads, q.shape[0])
    bounds_q, bounds_k = cu_q.get(), cu_k.get()
    # Each sequence against its own float64 reference; the error bound applies to the batch as a whole, as for
    # dense batches (a one-query sequence alone can have a naive error far below the kernel's rounding).
    parts = []
    for i in range(len(lens_q)):
        (q0, q1), (k0, k1) = bounds_q[i:i + 2], bounds_k[i:i + 2]
        if q1 == q0:
            continue
        if k1 == k0:  # no keys: zero output, lse -inf
            assert bool((to_float64(out[q0:q1]) == 0).all()) and bool(cupy.isneginf(lse[:, q0:q1]).all())
            continue
        own = None if slopes is None else slopes if slopes.ndim == 1 else slopes[i:i + 1]
        parts.append(forward_errors(out[None, q0:q1], lse[None, :, q0:q1], q64[None, q0:q1], k64[None, k0:k1],
                                    v64[None, k0:k1], 1 / math.sqrt(head_dim), causal, dtype, alibi_slopes=own,
                                    **variant))
    if parts:
        assert_within_bounds(parts, dtype)
    if mode is None:
        return
    dout, dout64 = random_array(rng, q.shape, dtype)
    kw = backward_mode(mode)
    dq, dk, dv = cf.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max(lens_q), max(lens_k),
                                               causal=causal, alibi_slopes=slopes, **variant, **kw)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    parts = []
    for i in range(len(lens_q)):
        (q0, q1), (k0, k1) = bounds_q[i:i + 2], bounds_k[i:i + 2]
        if q1 == q0 or k1 == k0:  # nothing attends: every gradient of the sequence is 0
            for g, (a, b) in ((dq, (q0, q1)), (dk, (k0, k1)), (dv, (k0, k1))):
                assert bool((to_float64(g[a:b]) == 0).all())
            continue
        own = None if slopes is None else slopes if slopes.ndim == 1 else slopes[i:i + 1]
        parts.append(grad_errors((dq[None, q0:q1], dk[None, k0:k1], dv[None, k0:k1]), dout64[None, q0:q1],
                                 q64[None, q0:q1], k64[None, k0:k1], v64[None, k0:k1], 1 / math.sqrt(head_dim),
                                 causal, dtype, alibi_slopes=own, **variant))
    if parts:
        assert_within_bounds(parts, dtype)


lengths = st.lists(st.tuples(st.sampled_from([0, 1, 2, 17, 97, 130, 300]), st.sampled_from([0, 1, 5, 17, 97, 256])),
                   min_size=1, max_size=6)
head_dims = st.one_of(st.sampled_from([1, 12, 59, 64, 111, 128, 200, 256]), st.integers(1, 32).map(lambda i: 8 * i))
sides = st.one_of(st.just(-1), st.integers(0, 8), st.integers(0, 300))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lens=lengths, nheads_k=st.integers(1, 3), group=st.sampled_from([1, 2, 4]), head_dim=head_dims,
       dtype=st.sampled_from(DTYPES), causal=st.booleans(), window=st.tuples(sides, sides),
       softcap=st.sampled_from([0.0, 0.0, 20.0]), alibi=st.sampled_from([None, "heads", "sequences"]),
       seed=st.integers(0, 2**32 - 1))
def test_varlen_forward_matches_each_sequence(lens, nheads_k, group, head_dim, dtype, causal, window, softcap,
                                              alibi, seed):
    lens_q, lens_k = [a for a, _ in lens], [b for _, b in lens]
    run_varlen(seed, lens_q, lens_k, nheads_k * group, nheads_k, head_dim, dtype, causal, alibi=alibi,
               window_size=window, softcap=softcap)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lens=lengths, nheads_k=st.integers(1, 2), group=st.sampled_from([1, 2, 4]), head_dim=head_dims,
       dtype=st.sampled_from(DTYPES), causal=st.booleans(), window=st.tuples(sides, sides),
       softcap=st.sampled_from([0.0, 0.0, 20.0]), alibi=st.sampled_from([None, "heads", "sequences"]),
       mode=st.sampled_from(["default", "deterministic", "atomic"]), seed=st.integers(0, 2**32 - 1))
def test_varlen_backward_matches_each_sequence(lens, nheads_k, group, head_dim, dtype, causal, window, softcap,
                                               alibi, mode, seed):
    lens_q, lens_k = [a for a, _ in lens], [b for _, b in lens]
    run_varlen(seed, lens_q, lens_k, nheads_k * group, nheads_k, head_dim, dtype, causal, alibi=alibi, mode=mode,
               window_size=window, softcap=softcap)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["default", "deterministic", "atomic"])
def test_long_and_short_sequences_together(dtype, causal, mode):
    run_varlen(1, [1025, 1, 0, 300, 17], [1025, 7, 33, 0, 4097], 8, 2, 128, dtype, causal, mode=mode)


@pytest.mark.parametrize("head_dim", [64, 128, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_an_entry_never_sees_its_neighbours_values(head_dim, causal):
    # bulk copies read a box past an entry's end into the next entry's first rows (cuda_src/flash_fwd.cu, the
    # producer's TMA branch): those keys are hidden and their values zeroed, so inf and NaN in the next entry's
    # values (and keys) reach no other entry; lengths off every tile size, the last entry ending inside the array
    import cupy

    lens = [97, 130, 1, 300]
    rng = np.random.default_rng(head_dim)
    q, q64 = random_array(rng, (sum(lens), 2, head_dim), "bfloat16")
    k, k64 = random_array(rng, (sum(lens), 2, head_dim), "bfloat16")
    v, v64 = random_array(rng, (sum(lens), 2, head_dim), "bfloat16")
    starts = np.cumsum([0] + lens)
    inf, nan = cupy.uint16(0x7F80), cupy.uint16(0x7FC0)  # bfloat16 bits
    for i in (1, 3):  # the entries after 0 and 2 begin with non-finite values and keys
        first = int(starts[i])
        v.view(cupy.uint16)[first:first + 3] = inf
        v.view(cupy.uint16)[first + 3:first + 5] = nan
        k.view(cupy.uint16)[first + 1] = nan
    cu = offsets(lens)
    out, lse = cf.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal, return_lse=True)
    for i in (0, 2):
        q0, q1 = int(starts[i]), int(starts[i + 1])
        errors = forward_errors(out[None, q0:q1], lse[None, :, q0:q1], q64[None, q0:q1], k64[None, q0:q1],
                                v64[None, q0:q1], 1 / math.sqrt(head_dim), causal, "bfloat16")
        assert_within_bounds([errors], "bfloat16")


def test_varlen_vjp_and_given_gradient_buffers():
    import cupy

    rng = np.random.default_rng(3)
    q, _ = random_array(rng, (40, 4, 59), "bfloat16")  # a padded head dim as well
    k, _ = random_array(rng, (50, 2, 59), "bfloat16")
    dout, _ = random_array(rng, (40, 4, 59), "bfloat16")
    cu_q, cu_k = offsets([10, 0, 30]), offsets([20, 5, 25])
    out, vjp = cf.flash_attn_varlen_vjp(q, k, k, cu_q, cu_k, 30, 25, causal=True, deterministic=True)
    dq, dk, dv = vjp(dout)
    out2, lse = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 30, 25, causal=True, return_lse=True)
    bufs = [cupy.full(x.shape, float("nan"), x.dtype) for x in (q, k, k)]
    got = cf.flash_attn_varlen_backward(dout, q, k, k, out2, lse, cu_q, cu_k, 30, 25, causal=True,
                                        deterministic=True, dq=bufs[0], dk=bufs[1], dv=bufs[2])
    assert all(a is b for a, b in zip(got, bufs))
    for a, b in zip((dq, dk, dv), got):
        assert bool(cupy.array_equal(a.view(cupy.uint16), b.view(cupy.uint16)))


def test_offsets_rewritten_after_their_check_are_clamped_and_raised_by_the_next_call():
    """An offsets array is read back and checked on its first use only (cupyflash/_offsets.py): values written
    into it later reach the kernels unchecked. Valid ones are used as they are; invalid ones are clamped into the
    packed tensors (run under compute-sanitizer memcheck too: .ci/gpu sanitize-offsets), and the next call
    raises."""
    import cupy

    from cupyflash import _offsets

    rng = np.random.default_rng(5)
    q, _ = random_array(rng, (40, 2, 64), "bfloat16")
    k, _ = random_array(rng, (50, 2, 64), "bfloat16")
    cu_q, cu_k = offsets([15, 25]), offsets([20, 30])
    _offsets.forget_checked()
    first = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30)
    cu_q[:] = offsets([25, 15])  # valid, other lengths: the kernels read them as they are
    cu_k[:] = offsets([30, 20])
    again = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30)
    fresh = cf.flash_attn_varlen_func(q, k, k, offsets([25, 15]), offsets([30, 20]), 25, 30)
    assert bool(cupy.array_equal(again.view(cupy.uint16), fresh.view(cupy.uint16)))
    assert not bool(cupy.array_equal(again.view(cupy.uint16), first.view(cupy.uint16)))
    cupy.cuda.Device().synchronize()
    for bad_q, bad_k in (([0, 30, 60], [0, 30, 50]), ([0, 30, 20], [0, 30, 50]), ([3, 20, 40], [0, 30, 50]),
                         ([0, 10, 40], [0, 40, 50]), ([0, 20, 35], [0, 30, 50]), ([-7, 20, 40], [0, 30, 50])):
        cu_q[:] = cupy.asarray(bad_q, cupy.int32)  # past total_q, decreasing, not from 0, longer than
        cu_k[:] = cupy.asarray(bad_k, cupy.int32)  # max_seqlen_k, not to total_q, negative
        got = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30)
        cupy.cuda.Device().synchronize()
        with pytest.raises(ValueError, match="earlier flash_attn_varlen call"):
            cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30)
        assert got.shape == (40, 2, 64)
        # the raise forgot every checked array: this array's next use is checked again, before any launch
        with pytest.raises(ValueError, match="cu_seqlens_[qk]"):
            cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30)
        cu_q[:], cu_k[:] = offsets([15, 25]), offsets([20, 30])
        cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30)  # checked again, and passes
    # the backward guards itself the same way
    out, lse = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 25, 30, return_lse=True)
    cu_q[:] = cupy.asarray([0, 30, 20], cupy.int32)
    cf.flash_attn_varlen_backward(out, q, k, k, out, lse, cu_q, cu_k, 25, 30)
    cupy.cuda.Device().synchronize()
    with pytest.raises(ValueError, match="earlier flash_attn_varlen call"):
        cf.flash_attn_varlen_backward(out, q, k, k, out, lse, cu_q, cu_k, 25, 30)


def test_offsets_are_checked_before_any_launch_and_a_cached_plan_sees_new_offsets():
    import cupy

    rng = np.random.default_rng(2)
    q, _ = random_array(rng, (20, 2, 64), "float16")
    k, _ = random_array(rng, (30, 2, 64), "float16")
    good_q, good_k = offsets([5, 15]), offsets([10, 20])
    cf.flash_attn_varlen_func(q, k, k, good_q, good_k, 15, 20)
    for cu_q, match in ((offsets([5, 16]), "must end at the number of packed rows 20"),
                        (cupy.asarray(np.array([0, 15, 5], np.int32)), "must not decrease"),
                        (offsets([4, 16]), "longer than max_seqlen = 15")):
        with pytest.raises(ValueError, match=match):
            cf.flash_attn_varlen_func(q, k, k, cu_q, good_k, 15, 20)
    # same shapes, other offsets: the cached plan runs with the new ones
    run = lambda lq, lk: cf.flash_attn_varlen_func(q, k, k, offsets(lq), offsets(lk), 15, 20)  # noqa: E731
    a, b = run([5, 15], [10, 20]), run([15, 5], [20, 10])
    assert not bool(cupy.array_equal(a.view(cupy.uint16), b.view(cupy.uint16)))
    with pytest.raises(NotImplementedError, match="return_attn_probs"):
        cf.flash_attn_varlen_func(q, k, k, good_q, good_k, 15, 20, return_attn_probs=True)

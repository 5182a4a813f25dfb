"""The backward kernels on a GPU against the float64 analytic gradient, on fresh random inputs with NaN-poisoned
outputs; deterministic mode bit for bit."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import GPU_SKIP_REASON, requires_gpu
from cupyflash._accuracy import check_grads_against_reference, to_float64
from gpu_helpers import backward_mode, make_problem

import cupyflash as cf
from cupyflash.configs import KERNEL_HEAD_DIMS, candidates

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

AWKWARD_SEQLENS = [1, 17, 97, 1025, 4097]
HEAD_DIMS = list(range(8, 257, 8))
DTYPES = ["float16", "bfloat16"]


def run_case(seed, batch, seqlen_q, seqlen_k, nheads, head_dim, dtype, causal, **kw):
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads, head_dim,
                                                            dtype)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, **kw)
    for g, x in zip(grads, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype
    # D = rowsum(dO o O) comes from the 16-bit out, as in every backward given the forward's output: the reference
    # and the naive baseline take it from there too (1 query, 2 keys, head dim 104, fp16, on the H100: out's
    # rounding alone put dk's error at 3x that of a baseline whose D came from its own O)
    return check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(head_dim), causal, dtype,
                                         out=out)


seqlens = st.one_of(st.sampled_from(AWKWARD_SEQLENS), st.integers(1, 300))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), seqlen_q=seqlens, seqlen_k=seqlens,
       nheads=st.integers(1, 3), head_dim=st.sampled_from(HEAD_DIMS), dtype=st.sampled_from(DTYPES),
       causal=st.booleans(), mode=st.sampled_from(["default", "deterministic", "atomic"]))
def test_backward_matches_float64(seed, batch, seqlen_q, seqlen_k, nheads, head_dim, dtype, causal, mode):
    while batch * nheads * seqlen_q * seqlen_k > 2**25 and batch * nheads > 1:
        batch, nheads = max(1, batch // 2), max(1, nheads // 2)
    kw = backward_mode(mode)
    run_case(seed, batch, seqlen_q, seqlen_k, nheads, head_dim, dtype, causal, **kw)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_every_head_dim(head_dim, dtype, causal):
    run_case(head_dim, 2, 97, 211, 3, head_dim, dtype, causal, atomic_dq=head_dim % 16 == 0)


def _device_candidates(kind):
    if GPU_SKIP_REASON:  # the module is skipped; with a GPU, a failure here must fail loudly
        return []
    from cupyflash._device import device_limits

    limits = device_limits(0)
    return [(kd, c) for kd in KERNEL_HEAD_DIMS for c in candidates(kind, limits, kd)]


BWD = _device_candidates("bwd")
BWD_DQ = _device_candidates("bwd_dq")


@pytest.mark.parametrize("kd,config", BWD, ids=[f"d{kd}-{c}" for kd, c in BWD])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("atomic_dq", [True, False])
def test_every_dkdv_config(kd, config, causal, atomic_dq):
    for i, head_dim in enumerate((kd - 8, kd)):
        run_case(kd + i, 1, config.block_m * 3 + 5, config.block_n * 2 + 7, 2, head_dim, DTYPES[i], causal,
                 config=config, atomic_dq=atomic_dq)


@pytest.mark.parametrize("kd,config", BWD_DQ, ids=[f"d{kd}-{c}" for kd, c in BWD_DQ])
@pytest.mark.parametrize("causal", [False, True])
def test_every_deterministic_dq_config(kd, config, causal):
    for i, head_dim in enumerate((kd - 8, kd)):
        run_case(kd + i, 1, config.block_m * 2 + 5, config.block_n * 3 + 7, 2, head_dim, DTYPES[1 - i], causal,
                 deterministic=True, dq_config=config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_deterministic_is_bitwise_reproducible(dtype, causal):
    import cupy

    (q, k, v, dout), _ = make_problem(1, 2, 1000, 777, 4, 4, 128, dtype)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True)
    first = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, deterministic=True)
    for _ in range(3):
        again = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, deterministic=True)
        for a, b in zip(first, again):
            assert bool(cupy.array_equal(a.view(cupy.uint16), b.view(cupy.uint16)))


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(300, 50), (64, 1), (1, 1), (1, 300)])
def test_rows_without_keys_have_zero_gradient(seqlen_q, seqlen_k):
    run_case(9, 2, seqlen_q, seqlen_k, 2, 64, "float16", True)
    (q, k, v, dout), _ = make_problem(10, 1, seqlen_q, seqlen_k, 1, 1, 64, "bfloat16")
    out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True)
    dq, _, _ = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True)
    empty = max(0, seqlen_q - seqlen_k)
    assert bool((to_float64(dq[:, :empty]) == 0).all())


@pytest.mark.parametrize("mode", [{}, {"deterministic": True}, {"atomic_dq": True}], ids=["default", "det", "atomic"])
def test_very_negative_scores_stay_finite(mode):
    """Every score near -128 puts the log-sum-exp below -88, where exp(-lse) overflows fp32: padding keys (97 is no
    multiple of any key tile) must be masked rather than multiplied by their zero K rows."""
    import cupy

    rng = np.random.default_rng(11)
    shape_q, shape_k = (1, 50, 2, 64), (1, 97, 2, 64)
    q64 = 4 + 0.1 * rng.standard_normal(shape_q)
    k64 = -(4 + 0.1 * rng.standard_normal(shape_k))
    v64, dout64 = rng.standard_normal(shape_k), rng.standard_normal(shape_q)
    q, k, v, dout = (cupy.asarray(x, dtype=cupy.float16) for x in (q64, k64, v64, dout64))
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    assert float(lse.max()) < -100
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, **mode)
    check_grads_against_reference(grads, *(to_float64(x) for x in (dout, q, k, v)), 1 / 8, False, "float16")


def test_preallocated_and_strided_outputs():
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(2, 2, 130, 190, 3, 3, 64, "float16")
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    dq = cupy.empty_like(q)
    dk_bhsd = cupy.empty((2, 3, 190, 64), cupy.float16)  # written through a (B, S, H, D) view
    dv_wide = cupy.empty((2, 190, 3, 72), cupy.float16)  # a misaligned view: computed aside and copied in
    dk, dv = dk_bhsd.transpose(0, 2, 1, 3), dv_wide[..., 4:68]
    got = cf.flash_attn_backward(dout, q, k, v, out, lse, dq=dq, dk=dk, dv=dv)
    assert got[0] is dq and got[1] is dk and got[2] is dv
    check_grads_against_reference(got, dout64, q64, k64, v64, 1 / 8, False, "float16")


def test_preallocated_strided_outputs_with_a_padded_head_dim():
    """Head dim 59 runs on zero-padded copies; the gradients' real columns go straight into the given buffers."""
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(6, 2, 130, 190, 3, 3, 59, "bfloat16")
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    dq = cupy.full(q.shape, float("nan"), q.dtype)
    dk = cupy.full((2, 3, 190, 59), float("nan"), k.dtype).transpose(0, 2, 1, 3)
    dv = cupy.full((2, 190, 3, 70), float("nan"), v.dtype)[..., 5:64]
    got = cf.flash_attn_backward(dout, q, k, v, out, lse, dq=dq, dk=dk, dv=dv)
    assert got[0] is dq and got[1] is dk and got[2] is dv
    check_grads_against_reference(got, dout64, q64, k64, v64, 1 / math.sqrt(59), False, "bfloat16")


def test_vjp_matches_backward():
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(3, 1, 257, 257, 2, 2, 128, "bfloat16")
    out, vjp = cf.flash_attn_vjp(q, k, v, causal=True, deterministic=True)
    grads = vjp(dout)
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(128), True, "bfloat16")
    out2, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert bool(cupy.array_equal(out.view(cupy.uint16), out2.view(cupy.uint16)))
    again = cf.flash_attn_backward(dout, q, k, v, out2, lse, causal=True, deterministic=True)
    for a, b in zip(grads, again):
        assert bool(cupy.array_equal(a.view(cupy.uint16), b.view(cupy.uint16)))


def test_bad_backward_inputs_raise_before_launch():
    import cupy

    (q, k, v, dout), _ = make_problem(4, 1, 8, 8, 2, 2, 64, "float16")
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dout must have q's shape"):
        cf.flash_attn_backward(dout[:, :4], q, k, v, out, lse)
    with pytest.raises(TypeError, match="lse must be float32"):
        cf.flash_attn_backward(dout, q, k, v, out, lse.astype(cupy.float64))
    with pytest.raises(ValueError, match="lse must have shape"):
        cf.flash_attn_backward(dout, q, k, v, out, lse[:, :1])
    with pytest.raises(TypeError, match="out must have q's dtype"):
        cf.flash_attn_backward(dout, q, k, v, out.astype(cupy.float32), lse)
    with pytest.raises(ValueError, match="cannot be deterministic"):
        cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True, atomic_dq=True)
    with pytest.raises(ValueError, match="dq must match"):
        cf.flash_attn_backward(dout, q, k, v, out, lse, dq=cupy.empty((1, 8, 2, 32), cupy.float16))


def test_runs_on_the_current_stream():
    """The dQ kernel runs on a side stream forked from and joined into the caller's stream: results must be
    complete once the caller's stream is synchronized, with no device-wide synchronize."""
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(5, 2, 700, 600, 2, 2, 64, "float16")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True)
        grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True)
    stream.synchronize()
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / 8, True, "float16")

"""Additive bias on a GPU: forward and backward (dq, dk, dv and dbias) against float64 attention with the same
bias, every broadcast pattern, dtype and memory layout, -inf entries, with every other variant; NaN-poisoned
outputs; dbias bitwise reproducible in deterministic mode."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import GPU_SKIP_REASON, requires_gpu
from cupyflash._accuracy import check_against_reference, check_grads_against_reference, to_float64
from gpu_helpers import BIAS_HEAD_DIMS, BIAS_SEQLENS, BIAS_SIDES, LAYOUTS, backward_mode, make_bias, make_problem

import cupyflash as cf
from cupyflash.configs import KERNEL_HEAD_DIMS, candidates
from cupyflash.problem import Variant

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]
BIAS_DTYPES = ["float16", "bfloat16", "float32"]
def run_bias(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, bias_dtype, broadcast, layout,
             causal=False, hidden=0.0, mode=None, config=None, **variant):
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    rng = np.random.default_rng(seed + 1)
    bias, b64 = make_bias(rng, (batch, nheads, seqlen_q, seqlen_k), broadcast, bias_dtype, layout, hidden)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, bias=bias, config=config, **variant)
    assert out.shape == q.shape and out.dtype == q.dtype
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, bias=b64, **variant)
    if mode is None:
        return
    kw = backward_mode(mode)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, bias=bias, return_dbias=True,
                                   **variant, **kw)
    assert grads[3].shape == bias.shape
    # the gradient of the bias as given: a broadcast_to view's stride-0 dims get one entry per index
    ref_bias = cupy.broadcast_to(b64, bias.shape) if layout == "broadcast_view" else b64
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, bias=ref_bias, out=out,
                                  **variant)
    if mode == "deterministic":
        again = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, bias=bias, return_dbias=True,
                                       **variant, **kw)
        for a, b in zip(grads, again):
            assert bool(cupy.array_equal(a.view(cupy.uint8), b.view(cupy.uint8))), "not bitwise reproducible"


seqlens, head_dims, sides = BIAS_SEQLENS, BIAS_HEAD_DIMS, BIAS_SIDES


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 2), seqlen_q=seqlens, seqlen_k=seqlens,
       nheads_k=st.integers(1, 2), group=st.sampled_from([1, 2]), head_dim=head_dims, dtype=st.sampled_from(DTYPES),
       bias_dtype=st.sampled_from(BIAS_DTYPES), broadcast=st.tuples(*[st.booleans()] * 4),
       layout=st.sampled_from(LAYOUTS), causal=st.booleans(), window=st.tuples(sides, sides),
       softcap=st.sampled_from([0.0, 0.0, 15.0]), alibi=st.booleans(), hidden=st.sampled_from([0.0, 0.0, 0.3]),
       mode=st.sampled_from([None, "default", "deterministic", "atomic"]))
def test_bias_matches_float64(seed, batch, seqlen_q, seqlen_k, nheads_k, group, head_dim, dtype, bias_dtype,
                              broadcast, layout, causal, window, softcap, alibi, hidden, mode):
    import cupy

    nheads = nheads_k * group
    slopes = cupy.asarray(np.random.default_rng(seed).uniform(0.01, 0.3, nheads).astype(np.float32)) if alibi \
        else None
    run_bias(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, bias_dtype, broadcast, layout,
             causal, hidden, mode, window_size=window, softcap=softcap, alibi_slopes=slopes)


@pytest.mark.parametrize("bias_dtype", BIAS_DTYPES)
@pytest.mark.parametrize("broadcast", [(False,) * 4, (True, False, False, False), (True, True, True, False),
                                       (False, False, False, True)], ids=["full", "pair", "key_bias", "row_bias"])
@pytest.mark.parametrize("mode", ["default", "deterministic", "atomic"])
def test_long_sequences(bias_dtype, broadcast, mode):
    run_bias(7, 2, 1025, 1100, 4, 2, 128, "bfloat16", bias_dtype, broadcast, "contiguous", causal=True, mode=mode)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("broadcast, layout", [((False,) * 4, "contiguous"), ((True, False, False, False), "contiguous"),
                                               ((True, True, True, False), "broadcast_view"),
                                               ((False, True, False, False), "squeezed"),
                                               ((False, False, False, True), "contiguous"),
                                               ((True, False, False, False), "unaligned")],
                         ids=["full", "pair", "key_bias", "head_shared", "row_bias", "pair_copied"])
@pytest.mark.parametrize("seqlen_q, seqlen_k, variant", [(300, 517, {}), (1025, 1025, {"causal": True}),
                                                         (97, 1030, {"causal": True, "softcap": 15.0, "alibi": True}),
                                                         (1, 3000, {})],
                         ids=["plain", "causal", "modifiers", "decode"])
def test_bias_on_the_producer_tiles(head_dim, broadcast, layout, seqlen_q, seqlen_k, variant):
    # on Hopper at head dims 64 and 128 a 16-bit bias comes by bulk copies with the key tiles (bulk_bias.cuh): every
    # broadcast pattern (one row copied for a bias broadcast over queries, none for one broadcast over keys), a
    # copied bias (unaligned), GQA 2:1, awkward lengths, modifiers, a decode-shaped call; forward against float64,
    # the backward (unchanged) after it
    import cupy
    from cupyflash.forward import plan_for
    from gpu_helpers import runs_wgmma

    variant = dict(variant)
    if variant.pop("alibi", False):
        variant["alibi_slopes"] = cupy.asarray(np.linspace(0.02, 0.25, 4, dtype=np.float32))
    (q, k, v, _), _ = make_problem(0, 2, seqlen_q, seqlen_k, 4, 2, head_dim, "bfloat16")
    bias, _ = make_bias(np.random.default_rng(1), (2, 4, seqlen_q, seqlen_k), broadcast, "bfloat16", layout)
    config = plan_for(q, k, v, bias=bias, **variant).config
    if runs_wgmma():
        assert config.producer_warps and config.tma, config
    run_bias(head_dim + seqlen_q, 2, seqlen_q, seqlen_k, 4, 2, head_dim, "bfloat16", "bfloat16", broadcast, layout,
             hidden=0.1, mode="default", **variant)


def _tiles(kind, **variant):
    if GPU_SKIP_REASON:
        return []
    from cupyflash._device import device_limits

    limits = device_limits(0)
    return [(kd, c) for kd in KERNEL_HEAD_DIMS
            for c in candidates(kind, limits, kd, Variant("bfloat16", "band", bias="float32", **variant))]


@pytest.mark.parametrize("kd,config", _tiles("fwd"), ids=str)
def test_every_forward_tile(kd, config):
    # a bias shared by the batches: the grid takes batches fastest (_launch.batch_first)
    run_bias(kd, 2, config.block_m + 3, config.block_n * 2 + 5, 2, 1, kd - 3, "bfloat16", "float32",
             (True, True, False, False), "contiguous", causal=True, config=config)


@pytest.mark.parametrize("kind", ["bwd", "bwd_dq"])
def test_every_backward_tile(kind):
    tiles = _tiles(kind, dbias=kind == "bwd")  # with dbias, the dK/dV kernel's own candidates
    assert tiles
    # the dQ kernel with a bias shared by the batches (its grid takes batches fastest), dK/dV with a full one
    batch, shared = (1, False) if kind == "bwd" else (2, True)
    for kd, config in tiles:
        tiles = {"config": config} if kind == "bwd" else {"dq_config": config, "atomic_dq": False}
        (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(kd, batch, config.block_m * 2 + 3,
                                                                config.block_n + 5, 2, 1, kd, "float16")
        bias, b64 = make_bias(np.random.default_rng(kd), (batch, 2, q.shape[1], k.shape[1]),
                              (shared, False, False, False), "float16", "contiguous", hidden=0.1)
        out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True, bias=bias)
        grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True, bias=bias, return_dbias=True, **tiles)
        check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / math.sqrt(kd), True, "float16", bias=b64)


@pytest.mark.parametrize("softcap", [0.0, 10.0])
def test_rows_hidden_by_the_bias(softcap):
    """A row whose bias is -inf everywhere sees no key: output 0, lse -inf, zero gradients, no NaN."""
    import cupy

    (q, k, v, dout), _ = make_problem(3, 1, 40, 50, 2, 2, 64, "float16")
    bias = cupy.zeros((1, 2, 40, 50), cupy.float32)
    bias[0, 1, 5] = -cupy.inf
    bias[0, 0, :, 7] = -cupy.inf  # one key hidden from every query of head 0
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, bias=bias, softcap=softcap)
    assert bool((to_float64(out[0, 5, 1]) == 0).all()) and bool(cupy.isneginf(lse[0, 1, 5]))
    assert int(cupy.isneginf(lse).sum()) == 1 and bool(cupy.isfinite(to_float64(out)).all())
    dq, dk, dv, dbias = cf.flash_attn_backward(dout, q, k, v, out, lse, bias=bias, softcap=softcap,
                                               return_dbias=True)
    assert bool((to_float64(dq[0, 5, 1]) == 0).all())
    assert bool((dbias[0, 1, 5] == 0).all()) and bool((dbias[0, 0, :, 7] == 0).all())
    for g in (dq, dk, dv, dbias):
        assert bool(cupy.isfinite(to_float64(g)).all())


def test_a_bias_copy_is_made_per_call_and_the_plan_reads_the_new_values():
    """A bias whose rows need padding (seqlen_k not a multiple of 8) is copied each call; same shapes with other
    values give other results (the cached plan holds no stale copy)."""
    import cupy

    (q, k, v, _), _ = make_problem(5, 1, 33, 37, 2, 2, 32, "bfloat16")
    b1 = cupy.zeros((1, 2, 33, 37), cupy.float32)
    b2 = b1.copy()
    b2[..., :3] = 5.0
    o1, o2 = (cf.flash_attn_func(q, k, v, bias=b) for b in (b1, b2))
    o0 = cf.flash_attn_func(q, k, v)
    assert bool(cupy.array_equal(o0.view(cupy.uint16), o1.view(cupy.uint16)))
    assert not bool(cupy.array_equal(o1.view(cupy.uint16), o2.view(cupy.uint16)))


@pytest.mark.parametrize("seqlens", [(0, 9), (9, 0)], ids=["no_query", "no_key"])
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (3, 1, 1), (2, 1, 1, 1)], ids=str)
def test_dbias_of_an_empty_problem_is_zero_in_the_bias_shape(seqlens, shape):
    import cupy

    seqlen_q, seqlen_k = seqlens
    (q, k, v, dout), _ = make_problem(8, 2, seqlen_q, seqlen_k, 3, 3, 32, "float16")
    bias = cupy.ones(shape, cupy.float32)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, bias=bias)
    *grads, dbias = cf.flash_attn_backward(dout, q, k, v, out, lse, bias=bias, return_dbias=True)
    assert dbias.shape == shape and dbias.dtype == cupy.float32 and not bool(dbias.any())
    assert all(not bool(to_float64(g).any()) for g in grads)


def test_dbias_needs_a_bias():
    (q, k, v, dout), _ = make_problem(5, 1, 8, 8, 1, 1, 32, "float16")
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="return_dbias=True needs the bias"):
        cf.flash_attn_backward(dout, q, k, v, out, lse, return_dbias=True)
    with pytest.raises(ValueError, match="bias_requires_grad=True needs a bias"):
        cf.flash_attn_vjp(q, k, v, bias_requires_grad=True)


def test_vjp_with_bias():
    import cupy

    (q, k, v, dout), _ = make_problem(6, 1, 20, 30, 2, 1, 64, "float16")
    bias = cupy.asarray(np.random.default_rng(0).standard_normal((2, 1, 30)).astype(np.float16))
    out, vjp = cf.flash_attn_vjp(q, k, v, causal=True, bias=bias, bias_requires_grad=True)
    out2, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True, bias=bias)
    assert bool(cupy.array_equal(out.view(cupy.uint16), out2.view(cupy.uint16)))
    got = vjp(dout)
    assert len(got) == 4 and got[3].shape == (2, 1, 30) and got[3].dtype == cupy.float32
    want = cf.flash_attn_backward(dout, q, k, v, out2, lse, causal=True, bias=bias, return_dbias=True)
    for a, b in zip(got, want):
        assert bool(cupy.array_equal(a.view(cupy.uint8), b.view(cupy.uint8)))


@pytest.mark.parametrize("summed", range(16))
@pytest.mark.parametrize("shape", [(3, 2, 37, 130), (3, 2, 37, 128), (2, 1, 300, 4)], ids=str)
def test_dbias_sum_kernel_matches_numpy(summed, shape):
    """The partial's reduction over each subset of its dims (cuda_src/dbias_sum.cu), against float64 sums: rows
    of whole float4s or not, more dbias rows than the grid has blocks."""
    import cupy

    from cupyflash import _kernels
    from cupyflash.backward import _DBiasLayout
    from cupyflash.families import MMA_SM80

    partial = cupy.asarray(np.random.default_rng(summed).standard_normal(shape).astype(np.float32))
    layout = _DBiasLayout.__new__(_DBiasLayout)
    layout.partial_shape, layout.summed, layout.launches = shape, summed, True
    layout.shape = tuple(1 if summed >> d & 1 else n for d, n in enumerate(shape))
    layout.kernel = _kernels.get_function(MMA_SM80, "dbias_sum", None, 0, Variant("float16"), 0)
    layout.max_blocks = 7  # so that blocks and threads loop over several rows
    got = layout.finish(partial)
    axes = tuple(d for d in range(4) if summed >> d & 1)
    want = partial.astype(cupy.float64).sum(axis=axes, keepdims=True) if axes else partial
    assert got.shape == layout.shape and got.dtype == cupy.float32
    assert float(cupy.abs(got - want).max()) <= 1e-5 * max(1.0, float(cupy.abs(want).max()))

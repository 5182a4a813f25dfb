"""A boolean mask and an additive bias in one call (MaskedBias): forward and backward, dbias in every broadcast
pattern, against float64 attention with both; the mask's skipped tiles give zero gradients and leave the dbias
sums of the tiles visited intact; NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from cupyflash._accuracy import check_against_reference, check_grads_against_reference
from gpu_helpers import (BIAS_HEAD_DIMS, BIAS_SEQLENS, BIAS_SIDES, LAYOUTS, backward_mode, make_bias, make_mask,
                         make_problem)

import cupyflash as cf

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]
BIAS_DTYPES = ["float16", "bfloat16", "float32"]


def run_masked_bias(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, bias_dtype, bias_broadcast,
                    mask_broadcast, layout, density, blocks, causal=False, mode=None, prepared=False, **variant):
    import cupy

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    rng = np.random.default_rng(seed + 1)
    full = (batch, nheads, seqlen_q, seqlen_k)
    bias, b64 = make_bias(rng, full, bias_broadcast, bias_dtype, layout)
    mask, m_ref = make_mask(rng, full, mask_broadcast, layout, density, blocks)
    if prepared:
        mask = cf.prepare_mask(mask)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, bias=bias, mask=mask, **variant)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, bias=b64, mask=m_ref, **variant)
    if mode is None:
        return
    kw = backward_mode(mode)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, bias=bias, mask=mask, return_dbias=True,
                                   **variant, **kw)
    assert grads[3].shape == bias.shape
    ref_bias = cupy.broadcast_to(b64, bias.shape) if layout == "broadcast_view" else b64
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, bias=ref_bias, mask=m_ref,
                                  out=out, **variant)
    if mode == "deterministic":
        again = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, bias=bias, mask=mask,
                                       return_dbias=True, **variant, **kw)
        for a, b in zip(grads, again):
            assert bool(cupy.array_equal(a.view(cupy.uint8), b.view(cupy.uint8))), "not bitwise reproducible"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 2), seqlen_q=BIAS_SEQLENS, seqlen_k=BIAS_SEQLENS,
       nheads_k=st.integers(1, 2), group=st.sampled_from([1, 2]), head_dim=BIAS_HEAD_DIMS,
       dtype=st.sampled_from(DTYPES), bias_dtype=st.sampled_from(BIAS_DTYPES),
       bias_broadcast=st.tuples(*[st.booleans()] * 4), mask_broadcast=st.tuples(*[st.booleans()] * 4),
       layout=st.sampled_from(LAYOUTS), causal=st.booleans(), window=st.tuples(BIAS_SIDES, BIAS_SIDES),
       softcap=st.sampled_from([0.0, 0.0, 15.0]), alibi=st.booleans(), density=st.sampled_from([0.05, 0.5, 1.0]),
       blocks=st.sampled_from([None, 16, 32, 64, 128]), prepared=st.booleans(),
       mode=st.sampled_from([None, "default", "deterministic", "atomic"]))
def test_mask_and_bias_match_float64(seed, batch, seqlen_q, seqlen_k, nheads_k, group, head_dim, dtype, bias_dtype,
                                     bias_broadcast, mask_broadcast, layout, causal, window, softcap, alibi, density,
                                     blocks, prepared, mode):
    import cupy

    nheads = nheads_k * group
    slopes = cupy.asarray(np.random.default_rng(seed).uniform(0.01, 0.3, nheads).astype(np.float32)) if alibi \
        else None
    run_masked_bias(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, bias_dtype, bias_broadcast,
                    mask_broadcast, layout, density, blocks, causal, mode, prepared, window_size=window,
                    softcap=softcap, alibi_slopes=slopes)


# dbias's four reductions (bias.cuh BiasGrad): none, over queries (sums over a head's visited query tiles, written
# after its last one), over keys, over both.
DBIAS_SUMS = {"full": (False, False, False, False), "key_bias": (True, False, True, False),
              "row_bias": (False, False, False, True), "per_head": (True, False, True, True)}


@pytest.mark.parametrize("bias_broadcast", DBIAS_SUMS.values(), ids=DBIAS_SUMS.keys())
@pytest.mark.parametrize("mode", ["default", "deterministic", "atomic"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_long_sequences(bias_broadcast, mode, head_dim):
    run_masked_bias(7, 2, 1025, 1100, 4, 2, head_dim, "bfloat16", "float32", bias_broadcast, (False, True, False,
                    False), "contiguous", 0.5, 128, causal=True, mode=mode)


@pytest.mark.parametrize("bias_broadcast", DBIAS_SUMS.values(), ids=DBIAS_SUMS.keys())
@pytest.mark.parametrize("mode", ["deterministic", "atomic"])
def test_skipped_tiles_and_heads(bias_broadcast, mode):
    """Heads whose last query tiles the mask hides (dbias sums over queries are written after the last tile
    visited, not the last tile), a head the mask hides wholly (no tile visited: dbias 0, gradients 0), and a head
    whose first tiles are hidden."""
    import cupy

    batch, seqlen_q, seqlen_k, nheads, head_dim = 2, 700, 520, 4, 64
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(3, batch, seqlen_q, seqlen_k, nheads, nheads, head_dim,
                                                            "float16")
    bias, b64 = make_bias(np.random.default_rng(4), (batch, nheads, seqlen_q, seqlen_k), bias_broadcast, "float32",
                          "contiguous")
    host = np.random.default_rng(5).random((batch, nheads, seqlen_q, seqlen_k)) < 0.7
    host[:, 0, 300:] = False  # the last query tiles of head 0
    host[:, 1] = False        # all of head 1
    host[:, 2, :400] = False  # the first query tiles of head 2
    host[1, 3, :, 256:] = False  # the last key tiles of head 3 in one batch entry
    mask = cupy.asarray(host)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, bias=bias, mask=mask)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, False, "float16", bias=b64, mask=mask)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, bias=bias, mask=mask, return_dbias=True,
                                   **backward_mode(mode))
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, False, "float16", bias=b64, mask=mask, out=out)
    dq, dk, dv, dbias = grads
    assert bool((dq[:, :, 1] == 0).all()) and bool((dk[:, :, 1] == 0).all()) and bool((dv[:, :, 1] == 0).all())
    if dbias.shape[1] == nheads:
        assert bool((dbias[:, 1] == 0).all())


def test_vjp_with_mask_and_bias():
    import cupy

    (q, k, v, dout), _ = make_problem(6, 1, 90, 130, 2, 1, 64, "bfloat16")
    bias = cupy.asarray(np.random.default_rng(0).standard_normal((2, 90, 130)).astype(np.float32))
    mask, _ = make_mask(np.random.default_rng(1), (1, 2, 90, 130), (True, False, False, False), "contiguous", 0.5,
                        blocks=32)
    out, vjp = cf.flash_attn_vjp(q, k, v, causal=True, bias=bias, mask=mask, bias_requires_grad=True)
    out2, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True, bias=bias, mask=mask)
    assert bool(cupy.array_equal(out.view(cupy.uint16), out2.view(cupy.uint16)))
    grads = vjp(dout)
    again = cf.flash_attn_backward(dout, q, k, v, out2, lse, causal=True, bias=bias, mask=mask, return_dbias=True,
                                   deterministic=True)
    assert len(grads) == 4 and grads[3].shape == bias.shape
    for a, b in zip(grads[1:], again[1:]):  # dk, dv in every mode; dbias too, for a bias no batch or head shares
        assert bool(cupy.array_equal(a.view(cupy.uint8), b.view(cupy.uint8)))

"""Split-KV (num_splits; cuda_src/split_kv.cuh, split_combine.cu) on a GPU against the float64 reference: forced
split counts on awkward shapes with every variant, the automatic choice for decode-shaped calls, the backward on
a split forward's out and lse, and errors before launch. NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from cupyflash._accuracy import check_against_reference, check_grads_against_reference, random_array
from gpu_helpers import make_problem, runs_wgmma

import cupyflash as cf
from cupyflash.forward import plan_for

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]


def run_split(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, causal, num_splits, **variant):
    (q, k, v, _), (q64, k64, v64, _) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim,
                                                    dtype)
    assert plan_for(q, k, v, causal=causal, num_splits=num_splits, **variant).splits == num_splits
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, num_splits=num_splits, **variant)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (batch, nheads, seqlen_q)
    return check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(head_dim), causal, dtype, **variant)


@pytest.mark.parametrize("num_splits", [2, 3, 7, 128])
@pytest.mark.parametrize("head_dim", [40, 64, 96, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forced_splits_match_float64(num_splits, head_dim, causal, dtype):
    # more splits than key tiles: the extra splits see no key and merge as nothing
    run_split(num_splits, 2, 97, 1025, 3, 3, head_dim, dtype, causal, num_splits)


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(1, 1), (1, 17), (1, 4097), (17, 1), (300, 97), (2, 8192)])
@pytest.mark.parametrize("causal", [False, True])
def test_awkward_lengths(seqlen_q, seqlen_k, causal):
    run_split(seqlen_k, 1, seqlen_q, seqlen_k, 4, 2, 128, "bfloat16", causal, 5)


@pytest.mark.parametrize("variant", [
    dict(window_size=(300, 20)), dict(softcap=30.0), dict(alibi_slopes="heads"),
    dict(window_size=(64, 0), softcap=10.0, alibi_slopes="heads")], ids=["window", "softcap", "alibi", "all"])
def test_variants(variant):
    import cupy

    if variant.get("alibi_slopes") == "heads":
        variant = dict(variant, alibi_slopes=cupy.asarray(np.linspace(0.05, 0.5, 4).astype(np.float32)))
    run_split(7, 2, 33, 2000, 4, 1, 64, "float16", True, 6, **variant)


def test_bias_and_mask():
    import cupy

    rng = np.random.default_rng(3)
    bias = cupy.asarray(rng.standard_normal((1, 4, 5, 3000)).astype(np.float16))
    mask = cupy.asarray(rng.random((2, 1, 5, 3000)) > 0.3)
    run_split(11, 2, 5, 3000, 4, 4, 128, "bfloat16", False, 9, bias=bias, mask=mask)


@pytest.mark.parametrize("num_splits", [2, 5, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("band", [{}, dict(causal=True), dict(window_size=(700, 30))], ids=["none", "causal", "window"])
def test_split_outputs_equal_the_unsplit_ones(num_splits, dtype, band):
    """Split and unsplit differ only by rounding: the merge reorders fp32 sums, and each split rounds its P to 16
    bits against its own running max instead of the row's. Each of out's terms p_j v_j then carries a relative
    error of at most u (the 16-bit unit roundoff) in either kernel, so |out - ref| <= 2 u sum_j p_j |v_j| (the
    attention of |V|, from float64) plus one unit in the last place of the output; lse to fp32 rounding (rows that
    see no key: -inf in both). A merge that weighted a split wrongly would miss this by the output's size."""
    from cupyflash.reference import attention_reference

    (q, k, v, _), (q64, k64, v64, _) = make_problem(21, 2, 9, 3000, 4, 2, 128, dtype)
    ref, ref_lse = cf.flash_attn_func(q, k, v, return_lse=True, num_splits=1, **band)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, num_splits=num_splits, **band)
    ref, out = (x.astype(np.float32).get() for x in (ref, out))
    u, ulp = (2.0 ** -11, 2.0 ** -10) if dtype == "float16" else (2.0 ** -8, 2.0 ** -7)
    weight_of_abs_v, _ = attention_reference(q64, k64, abs(v64), 1 / math.sqrt(128), band.get("causal", False),
                                             **{k_: w for k_, w in band.items() if k_ != "causal"})
    bound = 2 * u * np.asarray(getattr(weight_of_abs_v, "get", lambda: weight_of_abs_v)()) + ulp * np.abs(ref) + 1e-6
    assert np.isfinite(out).all()
    assert (np.abs(out - ref) <= bound).all(), float((np.abs(out - ref) - bound).max())
    ref_lse, lse = ref_lse.get(), lse.get()
    assert (np.isneginf(lse) == np.isneginf(ref_lse)).all()
    finite = np.isfinite(ref_lse)
    assert (np.abs(lse[finite] - ref_lse[finite]) <= 1e-5 * np.abs(ref_lse[finite]) + 1e-5).all()


def test_dropout_matches_the_unsplit_kernel():
    """The kept pairs depend on (query, key) only: split and unsplit outputs agree to rounding."""
    (q, k, v, _), _ = make_problem(5, 1, 3, 5000, 8, 8, 128, "bfloat16")
    outs = [cf.flash_attn_func(q, k, v, dropout_p=0.3, rng_state=(42, 7), num_splits=s) for s in (1, 16)]
    assert float(abs(outs[0].astype(np.float32) - outs[1].astype(np.float32)).max()) < 2e-2
    assert not np.isnan(outs[1].astype(np.float32).get()).any()


def test_backward_on_a_split_forward():
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(13, 1, 7, 3000, 4, 2, 64, "float16")
    out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True, num_splits=12)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True)
    check_grads_against_reference(grads, dout64, q64, k64, v64, 1 / 8, True, "float16")


@pytest.mark.parametrize("seqlen_q", [1, 7, 64])
@pytest.mark.parametrize("head_dim", [56, 64, 120, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_decode_tiles_on_short_query_rows(seqlen_q, head_dim, causal):
    # configs: at most 64 query rows take a 64-row tile on Hopper at head dims up to 64 (When.max_seqlen_q), split
    # or not, with GQA; longer head dims keep the lead
    from cupyflash._device import device_limits
    from cupyflash.configs import select_config

    (q, k, v, _), (q64, k64, v64, _) = make_problem(seqlen_q + head_dim, 2, seqlen_q, 3000, 8, 2, head_dim,
                                                    DTYPES[causal])
    plan = plan_for(q, k, v, causal=causal)
    limits = device_limits(0)
    assert plan.config == select_config("fwd", limits, head_dim, variant=plan.problem.variant, seqlen_q=seqlen_q)
    if runs_wgmma():
        assert (plan.config.block_m == 64) == (head_dim <= 64), plan.config
    for num_splits in (0, 1, 5):
        out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, num_splits=num_splits)
        check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(head_dim), causal, DTYPES[causal])


@pytest.mark.parametrize("batch, nheads, seqlen_k, splits", [(1, 8, 131072, True), (1, 32, 8192, True),
                                                              (4, 32, 8192, False), (64, 8, 16384, False)])
def test_decode_shapes_split_automatically(batch, nheads, seqlen_k, splits):
    import cupy
    from cupyflash._device import device_limits
    from cupyflash.configs import forward_splits

    (q, _, _, _), _ = make_problem(0, batch, 1, 64, nheads, nheads, 128, "bfloat16")  # shapes only
    k = cupy.zeros((batch, seqlen_k, nheads, 128), q.dtype)
    plan = plan_for(q, k, k)
    blocks, key_tiles = batch * nheads, -(-seqlen_k // plan.config.block_n)
    assert plan.splits == forward_splits(device_limits(0), blocks, key_tiles, plan.config.blocks_per_sm)
    # The expectations are an H100's with one block an SM (the wgmma tiles); mma_sm80's two blocks an SM (forced
    # by CUPYFLASH_DISABLE_FAMILIES) double the slots, so that 4 x 32 heads split in two there.
    if device_limits(0).sm_count >= 100 and plan.config.blocks_per_sm == 1:
        assert (plan.splits > 1) == splits, (plan.splits, plan.config)
    full = plan_for(*make_problem(0, 4, 4096, 4096, 16, 16, 128, "bfloat16")[0][:3])
    assert full.splits == 1  # a grid that fills the GPU never splits


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), seqlen_q=st.integers(1, 40), seqlen_k=st.integers(1, 5000),
       nheads_k=st.integers(1, 2), group=st.integers(1, 3), head_dim=st.integers(1, 32).map(lambda i: 8 * i),
       dtype=st.sampled_from(DTYPES), causal=st.booleans(), num_splits=st.integers(0, 40))
def test_hypothesis(seed, seqlen_q, seqlen_k, nheads_k, group, head_dim, dtype, causal, num_splits):
    (q, k, v, _), (q64, k64, v64, _) = make_problem(seed, 1, seqlen_q, seqlen_k, nheads_k * group, nheads_k,
                                                    head_dim, dtype)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, num_splits=num_splits)
    check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(head_dim), causal, dtype)


@pytest.mark.parametrize("bad", [-1, 129, 2.0, "2", True])
def test_bad_num_splits_raise_before_launch(bad):
    (q, k, v, _), _ = make_problem(0, 1, 4, 64, 2, 2, 64, "float16")
    with pytest.raises(ValueError, match="num_splits"):
        cf.flash_attn_func(q, k, v, num_splits=bad)


def test_split_keys_refuse_block_sparse_masks():
    import cupy

    (q, k, v, _), _ = make_problem(0, 1, 256, 256, 2, 2, 64, "float16")
    blocks = cupy.ones((1, 1, 256, 256), bool)
    blocks[..., :128, 128:] = False
    prepared = cf.prepare_mask(blocks)
    with pytest.raises(ValueError, match="num_splits=2"):
        cf.flash_attn_func(q, k, v, mask=prepared, num_splits=2)

"""Boolean masks on a GPU (read by the kernels as a 0 / -inf bias): forward and backward against float64 attention
with the same mask, every broadcast pattern and layout, fully hidden rows and heads, with every other variant;
NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from cupyflash._accuracy import check_against_reference, check_grads_against_reference, to_float64
from gpu_helpers import (BIAS_HEAD_DIMS, BIAS_SEQLENS, BIAS_SIDES, LAYOUTS, backward_mode, make_mask, make_problem,
                         runs_wgmma)

import cupyflash as cf
from cupyflash.problem import Variant
from cupyflash.reference import mask_block_summary

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]
def run_mask(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, broadcast, layout, density,
             causal=False, mode=None, blocks=None, prepared=False, **variant):
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    mask, ref = make_mask(np.random.default_rng(seed + 1), (batch, nheads, seqlen_q, seqlen_k), broadcast, layout,
                          density, blocks)
    if prepared:
        mask = cf.prepare_mask(mask)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, mask=mask, **variant)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, mask=ref, **variant)
    if mode is None:
        return
    kw = backward_mode(mode)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, mask=mask, **variant, **kw)
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, mask=ref, out=out, **variant)


seqlens, head_dims, sides = BIAS_SEQLENS, BIAS_HEAD_DIMS, BIAS_SIDES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 2), seqlen_q=seqlens, seqlen_k=seqlens,
       nheads_k=st.integers(1, 2), group=st.sampled_from([1, 2]), head_dim=head_dims, dtype=st.sampled_from(DTYPES),
       broadcast=st.tuples(*[st.booleans()] * 4), layout=st.sampled_from(LAYOUTS), causal=st.booleans(),
       window=st.tuples(sides, sides), softcap=st.sampled_from([0.0, 0.0, 15.0]),
       density=st.sampled_from([0.05, 0.5, 0.95, 1.0]), mode=st.sampled_from([None, "default", "deterministic",
                                                                                "atomic"]),
       blocks=st.sampled_from([None, 16, 32, 64, 128]), prepared=st.booleans())
def test_mask_matches_float64(seed, batch, seqlen_q, seqlen_k, nheads_k, group, head_dim, dtype, broadcast, layout,
                              causal, window, softcap, density, mode, blocks, prepared):
    run_mask(seed, batch, seqlen_q, seqlen_k, nheads_k * group, nheads_k, head_dim, dtype, broadcast, layout,
             density, causal, mode, blocks, prepared, window_size=window, softcap=softcap)


@pytest.mark.parametrize("broadcast", [(False,) * 4, (False, True, True, False)], ids=["full", "key_padding"])
@pytest.mark.parametrize("mode", ["default", "deterministic"])
@pytest.mark.parametrize("blocks", [None, 128], ids=["random", "blocks"])
def test_long_sequences(broadcast, mode, blocks):
    run_mask(7, 2, 1025, 1100, 4, 2, 128, "bfloat16", broadcast, "contiguous", 0.5, causal=True, mode=mode,
             blocks=blocks)


def decode_tiles(words, col_tiles):
    """The summary's bits as reference.mask_block_summary's codes, (batch, heads, row tiles, col_tiles) int8: 0
    all hidden, 1 all visible, 2 mixed."""
    bits = (words.get()[..., None] >> np.arange(32, dtype=np.uint32)) & 1  # (b, h, r, word, 2, bit)
    bits = np.moveaxis(bits, 4, -1).reshape(words.shape[:3] + (-1, 2))[:, :, :, :col_tiles].astype(bool)
    return np.where(bits[..., 1], 1, np.where(bits[..., 0], 2, 0)).astype(np.int8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 3), nheads=st.integers(1, 3), seqlen_q=seqlens,
       seqlen_k=st.one_of(seqlens, st.sampled_from([2100, 4200])), broadcast=st.tuples(*[st.booleans()] * 4),
       layout=st.sampled_from(LAYOUTS), density=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
       blocks=st.sampled_from([None, 16, 48, 64]), by_key=st.booleans(),
       block_m=st.sampled_from([16, 32, 64, 128]), block_n=st.sampled_from([16, 32, 64, 128]))
def test_tile_summary_matches_numpy(seed, batch, nheads, seqlen_q, seqlen_k, broadcast, layout, density, blocks,
                                    by_key, block_m, block_n):
    """The summary kernel against NumPy, for every broadcast pattern and layout, both orientations, summary rows of
    more than one word (2100 and 4200 keys), and the padded copy of unaligned masks."""
    from cupyflash import _kernels, _mask
    from cupyflash.families import MMA_SM80
    from cupyflash.forward import plan_for

    (q, k, v, _), _ = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads, 8, "float16")
    full = (batch, nheads, seqlen_q, seqlen_k)
    mask, ref = make_mask(np.random.default_rng(seed), full, broadcast, layout, density, blocks)
    layout_ = plan_for(q, k, v, mask=mask).problem.mask
    kernel = _kernels.get_function(MMA_SM80, "mask_tiles", None, 0, Variant("float16"), 0)
    summary = _mask.TileSummary(kernel, layout_, by_key, block_m, block_n, seqlen_q, seqlen_k)
    _, words = summary.read(mask)
    col_tiles = -(-(seqlen_q if by_key else seqlen_k) // (block_m if by_key else block_n))
    block_rows, block_cols = (block_n, block_m) if by_key else (block_m, block_n)
    own = ref.get().reshape(layout_.dims)
    want = mask_block_summary(np.swapaxes(own, 2, 3) if by_key else own, block_rows, block_cols)
    if want.shape[3] == 1:  # columns broadcast: the one tile stands for all of them
        want = np.repeat(want, col_tiles, axis=3)
    np.testing.assert_array_equal(decode_tiles(words, col_tiles), want)
    assert not (words.get()[..., 1] & ~words.get()[..., 0]).any(), "all visible without any visible"


@pytest.mark.parametrize("mode", ["default", "deterministic", "atomic"])
def test_prepared_mask_gives_the_raw_masks_results_bit_for_bit(mode):
    import cupy

    (q, k, v, dout), _ = make_problem(11, 2, 300, 333, 4, 2, 64, "bfloat16")
    raw, _ = make_mask(np.random.default_rng(5), (2, 4, 300, 333), (False, True, False, False), "unaligned", 0.5,
                       blocks=32)
    prepared = cf.prepare_mask(raw)
    kw = backward_mode(mode)
    results = []
    for mask in (raw, prepared, prepared):  # the second prepared call reads the cached summaries
        out, lse = cf.flash_attn_func(q, k, v, causal=True, return_lse=True, mask=mask)
        grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True, mask=mask, **kw)
        results.append([x.copy() for x in (out, lse, *grads)])
    cached = dict(prepared._cache)
    cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True, mask=prepared, **kw)
    assert prepared._cache.keys() == cached.keys() and all(prepared._cache[key] is x for key, x in cached.items()), \
        "a prepared mask's summaries are computed once per tile shape"

    def same_bits(xs, ys):
        return all(bool(cupy.array_equal(x.view(cupy.uint8), y.view(cupy.uint8))) for x, y in zip(xs, ys))

    if mode == "atomic":  # dQ's atomics add in a varying order: dq is compared within bounds elsewhere
        results = [r[:2] + r[3:] for r in results]
    assert all(same_bits(results[0], other) for other in results[1:])
    if mode == "default":  # the VJP: flash_attn_func and flash_attn_backward with the mask it prepares itself
        out, vjp = cf.flash_attn_vjp(q, k, v, causal=True, mask=raw)
        assert same_bits([results[0][0], *results[0][2:]], [out, *vjp(dout)])


def test_fully_hidden_rows_and_heads():
    import cupy

    (q, k, v, dout), _ = make_problem(3, 1, 40, 50, 2, 2, 64, "float16")
    mask = cupy.ones((1, 2, 40, 50), bool)
    mask[0, 1] = False  # a whole head
    mask[0, 0, 5] = False  # one row
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, mask=mask)
    assert bool((to_float64(out[0, :, 1]) == 0).all()) and bool(cupy.isneginf(lse[0, 1]).all())
    assert bool((to_float64(out[0, 5, 0]) == 0).all()) and int(cupy.isneginf(lse[0, 0]).sum()) == 1
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, mask=mask)
    assert bool((to_float64(grads[0][0, :, 1]) == 0).all())
    for g in grads:
        assert bool(cupy.isfinite(to_float64(g)).all())


def test_a_mask_that_is_not_bool_is_refused_before_any_launch():
    import cupy

    (q, k, v, _), _ = make_problem(4, 1, 8, 8, 1, 1, 32, "float16")
    with pytest.raises(TypeError, match="mask must be bool"):
        cf.flash_attn_func(q, k, v, mask=cupy.ones((8, 8), cupy.float16))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 2), seqlen_q=seqlens, seqlen_k=seqlens,
       nheads_k=st.integers(1, 2), group=st.sampled_from([1, 2]), head_dim=head_dims, dtype=st.sampled_from(DTYPES),
       broadcast=st.tuples(*[st.booleans()] * 4), causal=st.booleans(), softcap=st.sampled_from([0.0, 15.0]),
       block=st.sampled_from([16, 32, 64, 128]), mode=st.sampled_from([None, "default", "deterministic", "atomic"]),
       with_bias=st.booleans())
def test_block_sparse_masks_match_float64(seed, batch, seqlen_q, seqlen_k, nheads_k, group, head_dim, dtype,
                                          broadcast, causal, softcap, block, mode, with_bias):
    """A prepared mask of wholly visible and wholly hidden blocks: kernels whose tiles divide its uniform blocks
    read only its tile summary (BlockMask), the others read it where it cuts their tiles; both match float64, with
    a bias too. Blocks of 128 hold every tile whose keys divide 128, so the forward must take the block-mask kernel
    there."""
    from gpu_helpers import make_bias

    from cupyflash.forward import plan_for

    nheads = nheads_k * group
    full = (batch, nheads, seqlen_q, seqlen_k)
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    rng = np.random.default_rng(seed + 1)
    mask, ref = make_mask(rng, full, broadcast, "contiguous", 0.5, block, uniform=True)
    prepared = cf.prepare_mask(mask)
    blocks = prepared.blocks()
    assert all(b >= min(block, 128) and b % min(block, 128) == 0 for b in blocks), (blocks, block)
    bias, b64 = make_bias(rng, full, (True, False, False, False), "bfloat16", "contiguous") if with_bias \
        else (None, None)
    variant = dict(causal=causal, softcap=softcap, bias=bias)
    plan = plan_for(q, k, v, mask=prepared, **variant)
    if block == 128 and 128 % plan.config.block_n == 0:  # head dim 192's tiles of 96 keys cut them
        assert plan.problem.variant.mask_blocks, plan.config
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, mask=prepared, **variant)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, mask=ref, softcap=softcap, bias=b64)
    if mode is None:
        return
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, mask=prepared, **variant, **backward_mode(mode))
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, mask=ref, softcap=softcap,
                                  bias=b64, out=out)


def test_a_prepared_mask_that_cuts_tiles_is_read_as_usual():
    (q, k, v, _), _ = make_problem(3, 1, 300, 300, 2, 2, 64, "bfloat16")
    mask, _ = make_mask(np.random.default_rng(0), (1, 2, 300, 300), (False,) * 4, "contiguous", 0.5)
    prepared = cf.prepare_mask(mask)
    assert prepared.blocks() == (1, 1)
    from cupyflash.forward import plan_for

    assert not plan_for(q, k, v, mask=prepared).problem.variant.mask_blocks
    assert not plan_for(q, k, v, mask=mask).problem.variant.mask_blocks  # raw masks are never assumed uniform


def test_uniform_blocks_on_the_gpu_match_numpy():
    import cupy

    from cupyflash._mask import uniform_blocks

    rng = np.random.default_rng(5)
    for block in (16, 32, 64, 128):
        mask, _ = make_mask(rng, (2, 3, 500, 700), (False, True, False, False), "broadcast_view", 0.5, block,
                            uniform=True)
        assert uniform_blocks(mask) == uniform_blocks(cupy.asnumpy(mask), np)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("broadcast, layout", [((False,) * 4, "contiguous"), ((False, True, True, False), "contiguous"),
                                               ((False, True, False, False), "unaligned"),
                                               ((False, False, False, True), "contiguous")],
                         ids=["full", "key_padding", "pair_copied", "row_mask"])
@pytest.mark.parametrize("seqlen_q, seqlen_k, variant", [(300, 517, {}), (1025, 1030, {"causal": True}),
                                                         (97, 700, {"causal": True, "softcap": 15.0}),
                                                         (1, 3000, {})], ids=["plain", "causal", "softcap", "decode"])
def test_masks_read_in_their_tiles_on_the_producer_tiles(head_dim, broadcast, layout, seqlen_q, seqlen_k, variant):
    # on Hopper at head dims 64 and 128 a boolean mask read in the tiles it cuts comes by bulk copies with the key
    # tiles (bulk_bias.cuh SwizzledBias<mask8>): 128-blocks of every kind (hidden, shown, random), a key-padding
    # mask (one row copied), a copied mask, one constant along the keys (no copy); GQA 2:1; forward and backward
    from cupyflash.forward import plan_for

    (q, k, v, _), _ = make_problem(0, 2, seqlen_q, seqlen_k, 4, 2, head_dim, "bfloat16")
    mask, _ = make_mask(np.random.default_rng(1), (2, 4, seqlen_q, seqlen_k), broadcast, layout, 0.6, 128)
    config = plan_for(q, k, v, mask=mask, **variant).config
    if runs_wgmma():
        assert config.producer_warps and config.tma, config
    run_mask(head_dim + seqlen_q, 2, seqlen_q, seqlen_k, 4, 2, head_dim, "bfloat16", broadcast, layout, 0.6,
             mode="default", blocks=128, **variant)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal, softcap", [(False, 0.0), (True, 0.0), (True, 15.0)])
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(300, 517), (1025, 1025)])
def test_block_masks_on_the_producer_tiles(head_dim, causal, softcap, seqlen_q, seqlen_k):
    # a block-sparse mask of 128 x 128 blocks: on Hopper at head dims 64 and 128 the forward walks its summary on
    # the bulk-copy producer tiles (the walk entries ride with the key tiles), and matches float64 (GQA 2:1, rows
    # that see no block, the last tile partial); the backward reads the same summary
    from cupyflash.forward import plan_for

    full = (2, 4, seqlen_q, seqlen_k)
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(head_dim + seqlen_q, 2, seqlen_q, seqlen_k, 4, 2,
                                                            head_dim, "bfloat16")
    mask, ref = make_mask(np.random.default_rng(seqlen_k), full, (False, True, False, False), "contiguous", 0.5,
                          128, uniform=True)
    prepared = cf.prepare_mask(mask)
    plan = plan_for(q, k, v, causal=causal, softcap=softcap, mask=prepared)
    assert plan.problem.variant.mask_blocks
    if runs_wgmma():
        assert plan.config.producer_warps and plan.config.tma, plan.config
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, softcap=softcap, return_lse=True, mask=prepared)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, "bfloat16", mask=ref, softcap=softcap)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, softcap=softcap, mask=prepared)
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, "bfloat16", mask=ref,
                                  softcap=softcap, out=out)

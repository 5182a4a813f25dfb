"""Boolean masks on the CPU: the tile summary's layout (shape, strides, launch), prepare_mask's checks."""
import numpy as np
import pytest

from cupyflash import _mask
from cupyflash.problem import BiasLayout


def layout(dims, strides):
    return BiasLayout("bool", 1, dims, strides, given=dims)


def test_summary_by_query_tiles_of_a_full_mask():
    s = _mask.TileSummary(None, layout((2, 3, 100, 1000), (300000, 100000, 1000, 1)), False, 64, 32, 100, 1000)
    col_tiles = 32  # ceil(1000 / 32): one word per row
    assert s.shape == (2, 3, 2, 1, 2)
    assert s.grid == (col_tiles * 3, 2, 2)
    assert s.args == (300000, 100000, 1000, 1, 100, 1000, 64, 32, col_tiles, 1)
    assert s.strides == (3 * 2 * 1, 1, 2 * 1)  # (batch, row tile, head) in words
    assert s.fields("mask_tiles_q") == {"mask_tiles_q_str_batch": 6, "mask_tiles_q_str_seq": 1,
                                        "mask_tiles_q_str_head": 2}


def test_summary_by_key_tiles_swaps_rows_and_columns():
    s = _mask.TileSummary(None, layout((1, 1, 3000, 5000), (0, 0, 5000, 1)), True, 128, 64, 3000, 5000)
    key_tiles, query_tiles = 79, 24  # rows: ceil(5000 / 64); columns: ceil(3000 / 128)
    assert s.shape == (1, 1, key_tiles, 1, 2)
    assert s.args == (0, 0, 1, 5000, 5000, 3000, 64, 128, query_tiles, 1)
    assert s.grid == (query_tiles, key_tiles, 1)
    assert s.strides == (0, 1, 0)  # broadcast batch and heads read at stride 0


def test_summary_of_a_key_padding_mask_broadcast_over_queries():
    # (B, 1, 1, Sk): by query tiles one shared row of 3 words; by key tiles one column that stands for all 40
    by_query = _mask.TileSummary(None, layout((4, 1, 1, 4100), (4100, 0, 0, 1)), False, 128, 64, 5000, 4100)
    assert by_query.shape == (4, 1, 1, 3, 2) and by_query.strides == (3, 0, 0)
    assert by_query.grid == (65, 1, 4)
    by_key = _mask.TileSummary(None, layout((4, 1, 1, 4100), (4100, 0, 0, 1)), True, 128, 64, 5000, 4100)
    assert by_key.shape == (4, 1, 65, 2, 2) and by_key.strides == (130, 2, 0)
    assert by_key.grid == (1, 65, 4) and by_key.args[-2:] == (40, 2)


def test_summary_keys_depend_on_tile_shape_and_orientation():
    lay = layout((1, 1, 64, 64), (0, 0, 64, 1))
    keys = {_mask.TileSummary(None, lay, by_key, m, n, 64, 64).key
            for by_key in (False, True) for m, n in ((64, 32), (32, 64), (64, 64))}
    assert len(keys) == 6


def test_prepare_mask_needs_a_cuda_array():
    with pytest.raises(TypeError, match="mask must be a CUDA array"):
        _mask.prepare_mask(np.ones((4, 4), bool))


def test_unwrap():
    raw = object()
    assert _mask.unwrap(raw) is raw and _mask.unwrap(None) is None
    assert _mask.unwrap(_mask.PreparedMask(raw)) is raw


def test_uniform_blocks_of_block_structured_masks():
    rng = np.random.default_rng(0)
    for bq, bk in ((128, 128), (64, 32), (16, 128), (32, 16)):
        blocks = rng.random((2, 3, 6, 9)) < 0.5
        blocks[..., 0, 0], blocks[..., 0, 1], blocks[..., 1, 0] = True, False, False  # a change at each block edge
        mask = blocks.repeat(bq, axis=2).repeat(bk, axis=3)[..., :5 * bq + 7, :8 * bk + 3]  # partial last blocks
        assert _mask.uniform_blocks(mask, np) == (bq, bk)


def test_uniform_blocks_cap_at_the_largest_tile_and_follow_the_lowest_change():
    assert _mask.uniform_blocks(np.ones((3, 300, 200), bool), np) == (128, 128)  # constant
    assert _mask.uniform_blocks(np.zeros((0, 5), bool), np) == (128, 128)  # empty
    assert _mask.uniform_blocks(np.ones(17, bool), np) == (128, 128)  # one dim: keys only
    padding = np.arange(300)[None, :] < np.array([[100], [256]])  # key padding at 100 and 256: 4 divides both
    assert _mask.uniform_blocks(padding[:, None, None, :], np) == (128, 4)
    rng = np.random.default_rng(1)
    random = rng.random((4, 64, 64)) < 0.5
    assert _mask.uniform_blocks(random, np) == (1, 1)
    causal = np.tril(np.ones((256, 256), bool))  # every row differs from the next
    assert _mask.uniform_blocks(causal, np) == (1, 1)


def test_uniform_blocks_of_broadcast_views_read_each_distinct_entry_once():
    base = np.zeros((96, 80), bool)
    base[32:64, 16:48] = True
    view = np.broadcast_to(base, (8, 16, 96, 80))  # stride 0: not expanded
    assert _mask.uniform_blocks(view, np) == (32, 16)
    assert _mask.uniform_blocks(np.broadcast_to(base[40:41], (96, 80)), np) == (128, 16)  # broadcast over queries


@pytest.mark.parametrize("blocks, tiles, fits", [((128, 128), (128, 64), True), ((64, 32), (64, 32), True),
                                                 ((64, 32), (128, 32), False), ((64, 32), (64, 64), False),
                                                 (None, (16, 16), False)])
def test_tiles_fit_blocks_when_their_edges_divide_the_blocks(blocks, tiles, fits):
    from cupyflash.configs import _c

    assert _mask.tiles_fit_blocks(_c(*tiles, 4), blocks) is fits


def test_with_block_mask_takes_the_block_variant_only_where_every_tile_fits():
    from cupyflash.configs import _c
    from cupyflash.problem import Problem, Variant

    problem = Problem(2, 300, 300, 4, 4, 64, 0, 0.125, False, (-1, -1), 0.0, 0, Variant("bfloat16", bool_mask=True))
    tiles = {"big": (_c(128, 128, 4), None), "small": (_c(64, 32, 4), _c(64, 64, 4))}

    def pick(name):
        def chosen(variant):
            assert variant.mask_blocks
            return tiles[name]
        return chosen

    assert _mask.with_block_mask(problem, None, pick("big")) == (problem, None)  # a raw mask
    got, configs = _mask.with_block_mask(problem, (128, 128), pick("big"))
    assert got.variant.mask_blocks and configs == tiles["big"]
    assert _mask.with_block_mask(problem, (64, 64), pick("big")) == (problem, None)  # 128-row tiles straddle blocks
    assert _mask.with_block_mask(problem, (64, 64), pick("small"))[0].variant.mask_blocks
    assert _mask.with_block_mask(problem, (64, 32), pick("small")) == (problem, None)  # the dQ tile's 64 keys do not

    def refuses(variant):
        raise ValueError("a forced config the block-mask variant does not take")

    assert _mask.with_block_mask(problem, (128, 128), refuses) == (problem, None)

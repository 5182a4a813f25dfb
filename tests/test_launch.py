"""CPU checks of the launch geometry: which grids take batches fastest (coords.cuh QueryBlock)."""
import pytest

from cupyflash._launch import batch_first, query_grid, static_params
from cupyflash.problem import BiasLayout, Problem, Variant


def problem(dims=None, batch=2, nheads=3, seqlen_q=1000, seqlen_k=300):
    bias = None if dims is None else BiasLayout("bfloat16", 2, dims, (0, 0, 0, 0), False, dims)
    return Problem(batch, seqlen_q, seqlen_k, nheads, nheads, 64, 0, 0.125, False, (-1, -1), 0.0, 0,
                   Variant("bfloat16", bias="none" if bias is None else "bfloat16"), bias=bias)


@pytest.mark.parametrize("dims, batch, seqlen_q, expected", [
    ((1, 3, 1000, 300), 2, 1000, True),    # a pair bias shared by the batches
    ((1, 1, 1000, 300), 2, 1000, True),    # ... and by the heads
    ((2, 3, 1000, 300), 2, 1000, False),   # one bias per batch: nothing shared
    ((1, 3, 1000, 300), 1, 1000, False),   # one batch
    ((1, 3, 1, 300), 2, 1000, False),      # a key bias: one row, read from L2 by every block anyway
    ((1, 3, 1000, 1), 2, 1000, False),     # one value per query row
    ((1, 3, 65535 * 16 + 1, 2), 2, 65535 * 16 + 1, False),  # more query tiles than the grid's y dimension holds
    (None, 2, 1000, False),                # no bias
])
def test_batch_first_only_where_batches_share_a_bias_of_full_rows(dims, batch, seqlen_q, expected):
    p = problem(dims, batch=batch, seqlen_q=seqlen_q)
    assert batch_first(p) == expected
    assert static_params(p).array[0]["batch_first"] == int(expected)


def test_query_grid_orders():
    assert query_grid(problem(), 128) == (8, 3, 2)  # query tiles, heads, batches
    assert query_grid(problem((1, 3, 1000, 300)), 128) == (2, 8, 3)  # batches, query tiles, heads

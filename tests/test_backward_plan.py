"""CPU checks of the backward plan's pure parts: where the dK/dV kernel writes dbias and how it is reduced."""
import pytest

from cupyflash.backward import _DBiasLayout
from cupyflash.configs import _c
from cupyflash.problem import BiasLayout, Problem, Variant

CONFIG = _c(64, 128, 8, d_split=2)  # 4 key warps of 32 keys, queries split in 2


def problem(given, batch=2, nheads=3, seqlen_q=100, seqlen_k=300, **variant):
    bias = BiasLayout("float32", 4, (1, 1, 1, 1), (0, 0, 0, 0), False, given)
    return Problem(batch, seqlen_q, seqlen_k, nheads, nheads, 64, 0, 0.125, False, (-1, -1), 0.0, 0,
                   Variant("float16", bias="float32", dbias=True, **variant), bias=bias)


@pytest.mark.parametrize("given, partial, sums, summed", [
    ((2, 3, 100, 300), (2, 3, 100, 300), 0, 0),         # full: dS itself
    ((3, 100, 300), (2, 3, 100, 300), 0, 0b0001),       # pair bias: summed over the batch
    ((2, 1, 1, 300), (2, 3, 2, 300), 1, 0b0110),        # key bias: heads, and the two query halves' sums
    ((2, 3, 100, 1), (2, 3, 100, 12), 2, 0b1000),       # per query: 3 key blocks x 4 warps' key sums
    ((), (2, 3, 2, 12), 3, 0b1111),                     # one scalar
])
def test_partial_shapes_and_reductions(given, partial, sums, summed):
    layout = _DBiasLayout(problem(given), CONFIG, True)
    assert (layout.partial_shape, layout.sums, layout.summed, layout.shape) == (partial, sums, summed, given)
    b, h, rows, cols = partial
    assert layout.strides == (4 * h * rows * cols, 4 * cols, 4 * rows * cols)


def test_dims_of_size_one_in_the_problem_need_no_sum():
    layout = _DBiasLayout(problem((1, 1, 1, 1), batch=1, nheads=1, seqlen_q=1, seqlen_k=1), CONFIG, True)
    assert layout.partial_shape == (1, 1, 1, 1) and layout.sums == 0 and layout.summed == 0


@pytest.mark.parametrize("variant, launches, zero_fill", [
    ({}, True, False),                        # every element written: no zero fill
    ({"mask": "band"}, True, True),           # causal, windows: tiles outside the band are not visited
    ({"bool_mask": True}, True, True),        # tiles the mask hides are skipped
    ({}, False, True),                        # nothing launched: all zero
])
def test_the_partial_is_zero_filled_only_where_blocks_skip_tiles(variant, launches, zero_fill):
    assert _DBiasLayout(problem((3, 100, 300), **variant), CONFIG, launches).zero_fill == zero_fill

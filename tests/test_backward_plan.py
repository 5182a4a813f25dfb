"""CPU checks of the backward plan's pure parts: where the dK/dV kernel writes dbias and how it is reduced."""
import pytest

from cupyflash.backward import _DBiasLayout
from cupyflash.configs import _c
from cupyflash.problem import BiasLayout, Problem, Variant

CONFIG = _c(64, 128, 8, d_split=2)  # 4 key warps of 32 keys, queries split in 2


def problem(given, batch=2, nheads=3, seqlen_q=100, seqlen_k=300):
    bias = BiasLayout("float32", 4, (1, 1, 1, 1), (0, 0, 0, 0), False, given)
    return Problem(batch, seqlen_q, seqlen_k, nheads, nheads, 64, 0, 0.125, False, (-1, -1), 0.0, 0,
                   Variant("float16", bias="float32", dbias=True), bias=bias)


@pytest.mark.parametrize("given, partial, sums, axes", [
    ((2, 3, 100, 300), (2, 3, 100, 300), 0, ()),        # full: dS itself
    ((3, 100, 300), (2, 3, 100, 300), 0, (0,)),         # pair bias: summed over the batch
    ((2, 1, 1, 300), (2, 3, 2, 300), 1, (1, 2)),        # key bias: heads, and the two query halves' sums
    ((2, 3, 100, 1), (2, 3, 100, 12), 2, (3,)),         # per query: 3 key blocks x 4 warps' key sums
    ((), (2, 3, 2, 12), 3, (0, 1, 2, 3)),               # one scalar
])
def test_partial_shapes_and_reductions(given, partial, sums, axes):
    layout = _DBiasLayout(problem(given), CONFIG)
    assert (layout.partial_shape, layout.sums, layout.axes, layout.shape) == (partial, sums, axes, given)
    b, h, rows, cols = partial
    assert layout.strides == (4 * h * rows * cols, 4 * cols, 4 * rows * cols)


def test_dims_of_size_one_in_the_problem_need_no_sum():
    layout = _DBiasLayout(problem((1, 1, 1, 1), batch=1, nheads=1, seqlen_q=1, seqlen_k=1), CONFIG)
    assert layout.partial_shape == (1, 1, 1, 1) and layout.sums == 0 and layout.axes == ()

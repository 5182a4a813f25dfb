"""CPU checks of the backward plan's pure parts: where the dK/dV kernel writes dbias and how it is reduced."""
import pytest

from cupyflash.backward import _DBiasLayout, operand_rounding
from cupyflash.configs import _c
from cupyflash.problem import BiasLayout, Problem, Variant

CONFIG = _c(64, 128, 8, d_split=2)  # 4 key warps of 32 keys, queries split in 2


def problem(given, batch=2, nheads=3, seqlen_q=100, seqlen_k=300, head_dim=64, **variant):
    bias = BiasLayout("float32", 4, (1, 1, 1, 1), (0, 0, 0, 0), False, given)
    return Problem(batch, seqlen_q, seqlen_k, nheads, nheads, head_dim, 0, 0.125, False, (-1, -1), 0.0, 0,
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


@pytest.mark.parametrize("given, strides", [
    ((3, 100, 300), (0, 4 * 300, 4 * 100 * 300)),            # pair bias: every batch adds into the same heads
    ((2, 1, 100, 300), (4 * 100 * 300, 4 * 300, 0)),         # per batch, shared by the heads
    ((100, 300), (0, 4 * 300, 0)),                           # one (Sq, Sk) matrix for all
])
def test_biases_shared_by_batches_or_heads_add_into_dbias_with_atomics_unless_deterministic(given, strides):
    layout = _DBiasLayout(problem(given, head_dim=128), CONFIG, True, deterministic=False)
    assert layout.atomic and layout.sums == 4 and layout.summed == 0 and layout.zero_fill
    assert layout.partial_shape == (1,) * (4 - len(given)) + given and layout.strides == strides
    reproducible = _DBiasLayout(problem(given, head_dim=128), CONFIG, True, deterministic=True)
    assert not reproducible.atomic and reproducible.sums == 0 and reproducible.summed


@pytest.mark.parametrize("head_dim", [32, 64, 96, 100, 128, 256])
def test_dbias_atomics_at_every_head_dim(head_dim):
    layout = _DBiasLayout(problem((3, 100, 300), head_dim=head_dim), CONFIG, True, deterministic=False)
    assert layout.atomic and layout.sums == 4


@pytest.mark.parametrize("given", [(2, 3, 100, 300), (2, 1, 1, 300), (2, 3, 100, 1), ()])
def test_full_biases_and_query_or_key_sums_keep_the_partial(given):
    layout = _DBiasLayout(problem(given, head_dim=128), CONFIG, True, deterministic=False)
    assert not layout.atomic and layout.sums == _DBiasLayout(problem(given), CONFIG, True).sums


def test_with_atomic_dq_only_q_and_dout_are_staged_rounded():
    # float32 at "tf32": the dK/dV kernel rounds K and V in shared memory; the dQ kernel would reload them unrounded
    assert operand_rounding("round", True) == ("round", None, None, "round")
    assert operand_rounding("round", False) == ("round",) * 4
    assert operand_rounding(None, True) == (None,) * 4  # nothing rounds outside "tf32"

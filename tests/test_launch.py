"""CPU checks of the launch helpers' pure parts: the forward grid's order."""
import pytest

from cupyflash import _launch
from cupyflash.problem import BiasLayout, Problem, Variant


def problem(bias_dims=None, batch=4, seqlen=1000, nheads=8):
    bias = None if bias_dims is None else BiasLayout("float16", 2, bias_dims, (0, 0, 0, 0), False, bias_dims)
    return Problem(batch, seqlen, seqlen, nheads, nheads, 64, 0, 0.125, False, (-1, -1), 0.0, 0,
                   Variant("float16", bias="none" if bias is None else "float16"), bias=bias)


@pytest.mark.parametrize("bias_dims, batch, fastest", [
    (None, 4, False),                   # no bias
    ((1, 8, 1000, 1000), 4, True),      # a pair bias shared by the batch
    ((4, 1, 1, 1000), 4, False),        # a key bias per batch entry
    ((1, 8, 1000, 1000), 1, False),     # one batch entry: nothing to share
])
def test_batch_shared_biases_put_the_batch_first(bias_dims, batch, fastest):
    p = problem(bias_dims, batch)
    assert _launch.batch_fastest(p) == fastest
    tiles = 8  # ceil(1000 / 128)
    want = (batch, 8, tiles) if fastest else (tiles, 8, batch)
    assert _launch.query_grid(p, 128) == want
    assert _launch.query_grid(p, 128, batch_first=False) == (tiles, 8, batch)  # the backward's dQ kernel
    assert _launch.static_params(p).array[0]["bias_batch_fastest"] == int(fastest)


def test_tiles_past_grid_z_keep_the_tiles_first():
    assert not _launch.batch_fastest(problem((1, 8, 1, 1), seqlen=65535 * 16 + 1))

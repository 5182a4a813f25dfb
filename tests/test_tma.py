"""Tensor-map geometry for the forward's bulk tensor copies (cupyflash/_tma.py); the maps themselves run in
tests/test_forward_gpu.py (test_tensor_maps_follow_each_calls_arrays, and every TMA tile of the table)."""
import pytest

from cupyflash import _tma
from cupyflash._launch import contiguous_strides


def test_dims_go_innermost_first_with_byte_strides():
    shape = (3, 1000, 8, 128)  # (batch, rows, heads, head dim), bf16
    dims, strides = _tma.map_geometry(shape, contiguous_strides(shape, 2))
    assert dims == (128, 1000, 8, 3)
    assert strides == (8 * 128 * 2, 128 * 2, 1000 * 8 * 128 * 2)  # rows, heads, batch


def test_a_transposed_bhsd_view_keeps_its_strides():
    b, h, s, d = 2, 4, 333, 64
    bhsd = contiguous_strides((b, h, s, d), 2)
    bshd_view = (bhsd[0], bhsd[2], bhsd[1], bhsd[3])  # x.transpose(0, 2, 1, 3)
    dims, strides = _tma.map_geometry((b, s, h, d), bshd_view)
    assert dims == (d, s, h, b) and strides == (d * 2, s * d * 2, h * s * d * 2)
    assert _tma.usable((b, s, h, d), bshd_view)


@pytest.mark.parametrize("extent_one", [0, 1, 2])
def test_an_extent_one_dims_stride_is_replaced_by_a_usable_one(extent_one):
    shape = [2, 50, 3, 64]
    shape[extent_one] = 1
    strides = list(contiguous_strides(shape, 2))
    strides[extent_one] = 6  # any value: a slice's parent stride, or what a library reports for a size-1 dim
    dims, map_strides = _tma.map_geometry(tuple(shape), tuple(strides))
    assert all(st % 16 == 0 and st > 0 for st in map_strides)
    assert _tma.usable(tuple(shape), tuple(strides))


def test_moving_strides_that_are_not_16_byte_multiples_are_refused():
    assert not _tma.usable((2, 50, 3, 64), (50 * 3 * 64 * 2, 3 * 64 * 2 + 8, 64 * 2, 2))

"""Tensor-map geometry for the forward's bulk tensor copies (cupyflash/_tma.py); the maps themselves run in
tests/test_forward_gpu.py (test_tensor_maps_follow_each_calls_arrays, and every TMA tile of the table)."""
import pytest

from cupyflash import _tma
from cupyflash._launch import contiguous_strides
from cupyflash.problem import BiasLayout


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


class _FakeDriver:
    """Stands in for the two driver calls: records each call's arguments as plain values, returns `result`."""

    def __init__(self, result=0):
        self.result, self.calls = result, []

    def encode(self, dest, dtype, rank, address, dims, strides, box, element_strides, interleave, swizzle, l2, oob):
        self.calls.append(dict(dest=dest, dtype=dtype, rank=rank, address=address, dims=tuple(dims[:rank]),
                               strides=tuple(strides[:rank - 1]), box=tuple(box[:rank]),
                               element_strides=tuple(element_strides[:rank]), interleave=interleave,
                               swizzle=swizzle, l2=l2, oob=oob))
        return self.result

    def replace(self, dest, address):
        self.calls.append(dict(dest=dest, address=address))
        return self.result


@pytest.fixture
def fake_driver(monkeypatch):
    fake = _FakeDriver()
    monkeypatch.setattr(_tma, "_calls", (fake.encode, fake.replace))
    return fake


def test_encode_describes_one_swizzled_panel_of_a_tile(fake_driver):
    shape = (2, 300, 4, 120)  # head dim 120: the second panel's last 8 columns lie past the array (zeros)
    _tma.encode(4096, "bfloat16", 256, shape, contiguous_strides(shape, 2), 128)
    (call,) = fake_driver.calls
    assert call["dtype"] == 9 and call["rank"] == 4 and call["dest"] == 4096 and call["address"] == 256
    assert call["dims"] == (120, 300, 4, 2) and call["strides"] == (4 * 120 * 2, 120 * 2, 300 * 4 * 120 * 2)
    assert call["box"] == (64, 128, 1, 1) and call["element_strides"] == (1, 1, 1, 1)
    assert (call["interleave"], call["swizzle"], call["oob"]) == (0, 3, 0)  # none, 128-byte, zeros past the ends
    _tma.encode(4096, "float16", 256, shape, contiguous_strides(shape, 2), 80)
    assert fake_driver.calls[-1]["dtype"] == 6 and fake_driver.calls[-1]["box"] == (64, 80, 1, 1)


def test_driver_errors_raise_with_what_was_asked(monkeypatch):
    fake = _FakeDriver(result=1)  # CUDA_ERROR_INVALID_VALUE
    monkeypatch.setattr(_tma, "_calls", (fake.encode, fake.replace))
    with pytest.raises(RuntimeError, match=r"cuTensorMapEncodeTiled failed \(CUresult 1\).*shape \(1, 8, 2, 64\)"):
        _tma.encode(4096, "float16", 256, (1, 8, 2, 64), contiguous_strides((1, 8, 2, 64), 2), 64)
    with pytest.raises(RuntimeError, match="cuTensorMapReplaceAddress failed"):
        _tma.replace_address(4096, 0x1000)


def test_a_plan_re_points_only_the_maps_whose_arrays_moved(monkeypatch):
    from cupyflash.forward import ForwardPlan

    replaced = []
    monkeypatch.setattr(_tma, "replace_address", lambda dest, address: replaced.append((dest, address)))
    plan = ForwardPlan.__new__(ForwardPlan)  # only the map bookkeeping: no GPU
    plan.maps, plan.mapped = (100, 228, 356), (None, None, None)
    plan._point_maps((0x1000, 0x2000, 0x3000))
    assert replaced == [(100, 0x1000), (228, 0x2000), (356, 0x3000)]
    plan._point_maps((0x1000, 0x2000, 0x3000))  # the same arrays: nothing to do
    plan._point_maps((0x1000, 0x5000, 0x3000))  # k moved
    assert replaced[3:] == [(228, 0x5000)] and plan.mapped == (0x1000, 0x5000, 0x3000)


def test_a_plan_takes_maps_only_where_the_copy_engine_can(monkeypatch):
    import types

    from cupyflash.forward import _tensor_maps

    def problem(rows, bias=None):  # bias: a BiasLayout, additive or (dtype "bool") a mask read in its tiles
        mask = bias is not None and bias.dtype == "bool"
        variant = types.SimpleNamespace(rows=rows, dtype="bfloat16", bool_mask=mask, mask_blocks=False,
                                        bias="none" if bias is None or mask else bias.dtype)
        return types.SimpleNamespace(variant=variant, bias=None if mask else bias, mask=bias if mask else None,
                                     seqlen_k=517)

    config = types.SimpleNamespace(block_m=128, block_n=96, tma=True)
    shape = (2, 300, 4, 128)
    geometry = [(shape, contiguous_strides(shape, 2))] * 3
    fake = _FakeDriver()
    monkeypatch.setattr(_tma, "_calls", (fake.encode, fake.replace))
    maps, names = _tensor_maps(problem("dense"), config, geometry)
    assert names == ("q", "k", "v")
    assert [c["box"][1] for c in fake.calls] == [128, 96, 96]  # Q's box a query tile, K's and V's a key tile
    assert [c["dest"] for c in fake.calls] == [maps.address_of(name) for name in ("q", "k", "v")]
    fake.calls.clear()  # packed rows: one (1, total, heads, dim) array, each entry read at its offset
    packed = [((1, 3000, 4, 128), contiguous_strides((1, 3000, 4, 128), 2))] * 3
    assert _tensor_maps(problem("packed"), config, packed)[1] == ("q", "k", "v")
    assert [c["dims"] for c in fake.calls] == [(128, 3000, 4, 1)] * 3
    bad = [(shape, (1, 2, 3, 2))] * 3  # strides the engine cannot take
    assert _tensor_maps(problem("dense"), config, bad) == (None, ())
    # a 16-bit bias (bulk_bias.cuh): (batch, queries, heads, keys), keys innermost, its own extents (1 where
    # broadcast, read at coordinate 0), boxes of a query tile's rows or (broadcast over queries) of one row; none
    # for a bias broadcast over keys
    pair = BiasLayout("bfloat16", 2, (1, 4, 300, 517), (0, 300 * 520, 520, 1))
    fake.calls.clear()
    maps, names = _tensor_maps(problem("dense", pair), config, geometry)
    assert names == ("q", "k", "v", "bias") and fake.calls[3]["dest"] == maps.address_of("bias")
    assert fake.calls[3]["dims"] == (517, 300, 4, 1) and fake.calls[3]["box"][:2] == (64, 128)
    assert fake.calls[3]["strides"][:2] == (520 * 2, 300 * 520 * 2)
    key = BiasLayout("float16", 2, (2, 1, 1, 517), (520, 0, 0, 1))
    fake.calls.clear()
    assert _tensor_maps(problem("dense", key), config, geometry)[1][3:] == ("bias",)
    assert fake.calls[3]["dims"] == (517, 1, 1, 2) and fake.calls[3]["box"][:2] == (64, 1)
    assert fake.calls[3]["dtype"] == 6  # float16
    mask = BiasLayout("bool", 1, (2, 1, 1, 517), (528, 0, 0, 1))  # a key-padding mask: bytes, 128-key boxes
    fake.calls.clear()
    assert _tensor_maps(problem("dense", mask), config, geometry)[1] == ("q", "k", "v")  # 96-key tiles: no panel
    config128 = types.SimpleNamespace(block_m=128, block_n=128, tma=True)
    fake.calls.clear()
    assert _tensor_maps(problem("dense", mask), config128, geometry)[1][3:] == ("bias",)
    assert fake.calls[3]["dims"] == (517, 1, 1, 2) and fake.calls[3]["box"][:2] == (128, 1)
    assert fake.calls[3]["dtype"] == 0 and fake.calls[3]["strides"][2] == 528  # uint8
    row = BiasLayout("bfloat16", 2, (2, 4, 300, 1), (1200, 300, 1, 0))
    assert _tensor_maps(problem("dense", row), config, geometry)[1] == ("q", "k", "v")
    fake.result = 1  # the driver refuses: a warning, and the plan copies by cp.async
    with pytest.warns(RuntimeWarning, match="copying by cp.async.*CUresult 1"):
        assert _tensor_maps(problem("dense"), config, geometry) == (None, ())


def test_float32_maps_may_round_to_tf32_as_they_copy(fake_driver):
    # the float32 wgmma forward reads Q and K through TFLOAT32 maps (the copy rounds them), V^T through a float32
    # one (staged rounded); a float32 map's 128-byte panel holds 32 columns
    import types

    from cupyflash.forward import _tensor_maps

    variant = types.SimpleNamespace(rows="dense", dtype="float32", bool_mask=False, mask_blocks=False, bias="none")
    problem = types.SimpleNamespace(variant=variant, bias=None, mask=None, seqlen_k=517)
    config = types.SimpleNamespace(block_m=128, block_n=64, tma=True)
    shape = (2, 300, 4, 128)
    geometry = [(shape, contiguous_strides(shape, 4))] * 3
    assert _tensor_maps(problem, config, geometry, (128, 64, 128), ("tf32", "tf32", "float32"))[1] == ("q", "k", "v")
    assert [c["dtype"] for c in fake_driver.calls] == [11, 11, 7]
    assert [c["box"] for c in fake_driver.calls] == [(32, 128, 1, 1), (32, 64, 1, 1), (32, 128, 1, 1)]

"""The params struct: cupyflash/_params.py and cuda_src/params.cuh agree on every field's offset and the size.

The CUDA side is read off the compiler (NVRTC on the CPU), so a field added or moved on one side only fails here.
"""
import ctypes

import numpy as np
import pytest

from conftest import require_nvrtc
from cupyflash import _nvrtc
from cupyflash._kernels import load_source
from cupyflash._params import FIELDS, PARAMS_DTYPE, PER_CALL, POINTERS, Params, TensorMapArgs


@pytest.fixture(scope="module")
def cuda_layout():
    require_nvrtc("the params layout check")
    return _nvrtc.struct_layout(load_source("params.cuh"), "cf::AttnParams", [name for name, _ in FIELDS])


def test_size_agrees(cuda_layout):
    assert cuda_layout[0] == PARAMS_DTYPE.itemsize


@pytest.mark.parametrize("name", [name for name, _ in FIELDS])
def test_field_offset_agrees(cuda_layout, name):
    assert cuda_layout[1][name] == PARAMS_DTYPE.fields[name.replace(".", "_")][1]


def test_every_cuda_member_is_mirrored(cuda_layout):
    """A member added to params.cuh alone grows the struct past the last mirrored field."""
    last = max(cuda_layout[1].values())
    assert cuda_layout[0] - last <= 8  # the last field and the struct's tail padding


def test_tensor_maps_argument_agrees():
    """The forward's second argument: three 128-byte maps back to back (each 64-byte aligned in the struct)."""
    require_nvrtc("the params layout check")
    size, offsets = _nvrtc.struct_layout(load_source("params.cuh"), "cf::TensorMaps", list(TensorMapArgs.ARRAYS))
    assert size == len(TensorMapArgs.ARRAYS) * TensorMapArgs.MAP_BYTES
    assert offsets == {name: i * TensorMapArgs.MAP_BYTES for i, name in enumerate(TensorMapArgs.ARRAYS)}


def test_tensor_maps_are_64_byte_aligned_in_host_memory():
    """The driver writes tensor maps in place (cupyflash/_tma.py), and requires 64-byte aligned ones."""
    for _ in range(8):
        maps = TensorMapArgs()
        assert all(maps.address_of(name) % 64 == 0 for name in TensorMapArgs.ARRAYS)
        assert maps.array.nbytes == 512 and maps.address_of("v") == maps.address + 256
        assert maps.address_of("bias") == maps.address + 384


def test_the_probe_sees_a_moved_field():
    require_nvrtc("the params layout check")
    src = "struct P { float a; int b; long long c; };"
    size, offsets = _nvrtc.struct_layout(src, "P", ["a", "b", "c"])
    assert size == 16 and offsets == {"a": 0, "b": 4, "c": 8}
    size, offsets = _nvrtc.struct_layout("struct P { int b; long long c; float a; };", "P", ["a", "b", "c"])
    assert size == 24 and offsets == {"a": 16, "b": 0, "c": 8}


def test_per_call_fields_come_first_and_are_written_together():
    assert [name for name, _ in FIELDS[:len(PER_CALL)]] == list(PER_CALL)
    assert PER_CALL[:len(POINTERS)] == POINTERS
    params = Params()
    params.set(batch=7, softcap=2.5)
    params.set_per_call(range(1, len(PER_CALL) + 1))
    record = params.array[0]
    assert [int(record[name]) for name in PER_CALL] == list(range(1, len(PER_CALL) + 1))
    assert record["batch"] == 7 and record["softcap"] == np.float32(2.5)


def test_strides_are_stored_in_elements():
    params = Params()
    params.set_strides("k", (4096, 256, 128, 2), 2)
    assert (params.array[0]["k_str_batch"], params.array[0]["k_str_seq"], params.array[0]["k_str_head"]) == (
        2048, 128, 64)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 7, 8, 12, 100, 255, 4096, 65535, 2**20 + 7, 2**31 - 1])
def test_division_magic_divides_exactly(d):
    """The kernels' n / d = high 64 bits of n * magic (d = 1: n), for every n that can occur (< 2^31)."""
    from cupyflash._params import division_magic

    magic = division_magic(d)
    rng = np.random.default_rng(d)
    ns = np.concatenate([np.arange(0, 5000), rng.integers(0, 2**31, 5000), [2**31 - 1, d - 1, d, d + 1]])
    for n in map(int, ns):
        got = n if d == 1 else (n * magic) >> 64
        assert got == n // d, (n, d)


def test_kernel_params_is_one_pointer_to_the_struct():
    # cuLaunchKernel reads kernelParams as void*[1]; its one entry must be the struct's address, and writing the
    # pointers must change the bytes at that address (not a copy).
    params = Params()
    argv = np.frombuffer((ctypes.c_uint64 * 1).from_address(params.kernel_params), np.uint64)
    assert int(argv[0]) == params.array.ctypes.data
    params.set_per_call(range(100, 100 + len(PER_CALL)))
    first = np.frombuffer((ctypes.c_uint64 * len(PER_CALL)).from_address(int(argv[0])), np.uint64)
    assert first.tolist() == list(range(100, 100 + len(PER_CALL)))

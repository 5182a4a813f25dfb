"""Tensor maps for the forward's bulk tensor copies (TMA, compute capability 9.0): the forward kernel's second
argument (cuda_src/params.cuh TensorMaps, cupyflash._params.TensorMapArgs).

A (batch, rows, heads, head_dim) array is described to the copy engine as a 4-D tensor, head dim innermost, read in
boxes of 64 columns x one tile's rows with the 128-byte swizzle: exactly one panel of a SwizzledTile
(cuda_src/wgmma.cuh), so the engine writes the layout wgmma reads. Reads past the rows or the head dim fill zeros,
as the cp.async copies do. The map is encoded once per plan (``cuTensorMapEncodeTiled``); a call whose array sits
elsewhere only swaps its address (``cuTensorMapReplaceAddress``). Both are driver calls CuPy does not wrap: ctypes.
"""
from __future__ import annotations

import ctypes

#: CUtensorMapDataType
# bool: a mask's bytes, read as uint8; tf32: float32 rounded to TF32 (to nearest, ties to even) as the copy lands it
# (CU_TENSOR_MAP_DATA_TYPE_TFLOAT32; H100: docs/measurements/2026-11-30-tma-tf32-rounding-probe.py)
_DATA_TYPES = {"float16": 6, "bfloat16": 9, "float32": 7, "bool": 0, "tf32": 11}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "bool": 1, "tf32": 4}
_INTERLEAVE_NONE, _SWIZZLE_128B, _L2_PROMOTION_128B, _OOB_FILL_ZEROS = 0, 3, 2, 0
PANEL_COLS = 64  # elements of a 128-byte swizzled row (SwizzledTile::PANEL_COLS)

_calls = None


def _driver():
    """(cuTensorMapEncodeTiled, cuTensorMapReplaceAddress) from the driver CuPy has loaded."""
    global _calls
    if _calls is None:
        lib = ctypes.CDLL("libcuda.so.1")
        u64p, u32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
        encode = lib.cuTensorMapEncodeTiled
        encode.restype = ctypes.c_int
        encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p, u32p, u32p,
                           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        replace = lib.cuTensorMapReplaceAddress
        replace.restype = ctypes.c_int
        replace.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _calls = encode, replace
    return _calls


def map_geometry(shape, strides_bytes, itemsize: int = 2):
    """(dims, strides) of a (batch, rows, heads, head_dim) array for cuTensorMapEncodeTiled: dims innermost first
    (head_dim, rows, heads, batch), byte strides of the outer three. An extent-1 dimension's stride is never used;
    it is given one the driver accepts (a multiple of 16 past the rest of the array)."""
    batch, rows, heads, dim = shape
    dims = (dim, rows, heads, batch)
    strides = [strides_bytes[1], strides_bytes[2], strides_bytes[0]]
    span = max([dim * itemsize] + [s * n for s, n in zip(strides, dims[1:]) if n > 1])
    strides = [s if n > 1 else -(-span // 16) * 16 for s, n in zip(strides, dims[1:])]
    return dims, tuple(strides)


def usable(shape, strides_bytes, itemsize: int = 2) -> bool:
    """Whether the copy engine can read the array: byte strides multiples of 16 below 2^40, extents below 2^32
    (the kernels' 16-byte copies already need the first; an address off 16 bytes is a different plan key, whose
    array is staged into a fresh one)."""
    dims, strides = map_geometry(shape, strides_bytes, itemsize)
    return all(0 < s < 2**40 and s % 16 == 0 for s in strides) and all(0 < n < 2**32 for n in dims)


def encode(dest: int, dtype: str, address: int, shape, strides_bytes, box_rows: int) -> None:
    """Writes the tensor map of a (batch, rows, heads, head_dim) array at ``address`` to ``dest`` (64-byte aligned
    host memory, 128 bytes): boxes of one 128-byte row (64 16-bit columns, 32 floats, 128 mask bytes) x ``box_rows``
    rows, 128-byte swizzled. An additive bias or a mask is read as (batch, queries, heads, keys) (bias_geometry)."""
    dims, strides = map_geometry(shape, strides_bytes, ITEMSIZE[dtype])
    cols = 128 // ITEMSIZE[dtype]
    encode_tiled, _ = _driver()
    result = encode_tiled(
        dest, _DATA_TYPES[dtype], 4, address, (ctypes.c_uint64 * 4)(*dims), (ctypes.c_uint64 * 3)(*strides),
        (ctypes.c_uint32 * 4)(cols, box_rows, 1, 1), (ctypes.c_uint32 * 4)(1, 1, 1, 1), _INTERLEAVE_NONE,
        _SWIZZLE_128B, _L2_PROMOTION_128B, _OOB_FILL_ZEROS)
    if result:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed (CUresult {result}) for a {dtype} array of shape "
                           f"{tuple(shape)}, byte strides {tuple(strides_bytes)}, box {cols} x {box_rows}")


def bias_geometry(layout, seqlen_k: int):
    """(shape, byte strides, box rows) of an additive bias or a boolean mask as ``encode`` takes it
    (cuda_src/bulk_bias.cuh): a (batch, queries, heads, keys) array of its own dims (1 where broadcast), keys
    contiguous; boxes of one query row where it is broadcast over queries, else None (the tile's rows); None for one
    broadcast over keys, which the kernels read without a copy."""
    batch, heads, queries, keys = layout.dims
    if keys == 1:
        return None
    sb, sh, sq, _ = (st * layout.itemsize for st in layout.strides)
    return (batch, queries, heads, seqlen_k), (sb, sq, sh), (1 if queries == 1 else None)


def replace_address(dest: int, address: int) -> None:
    """Points the tensor map at ``dest`` to an array of the same geometry at ``address``."""
    result = _driver()[1](dest, address)
    if result:
        raise RuntimeError(f"cuTensorMapReplaceAddress failed (CUresult {result}) for address {address:#x}")

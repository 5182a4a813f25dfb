"""The Python mirror of ``cuda_src/params.cuh``: one field list, one NumPy structured dtype.

Every kernel takes one ``AttnParams`` by value; CuPy passes a size-one NumPy array of this dtype as that struct.
``FIELDS`` lists the struct's members in order with their C types; ``tests/test_params.py`` compiles offsetof and
sizeof checks of every field through NVRTC, so a drift between the two fails on the CPU.
"""
from __future__ import annotations

import struct
import threading

import numpy as np

_C_TYPES = {"ptr": np.uint64, "u64": np.uint64, "i64": np.int64, "int": np.int32, "u32": np.uint32,
            "float": np.float32}
#: (batch, seq, head) strides
STRIDED = ("q", "k", "v", "o", "do", "dq", "dk", "dv", "bias", "dbias", "mask_tiles_q", "mask_tiles_k",
           "mask")

#: The device pointers of AttnParams, in order.
POINTERS = ("q", "k", "v", "out", "lse", "dout", "lse2", "delta", "dq_accum", "dq", "dk", "dv", "alibi_slopes",
            "dkv_partial", "cu_seqlens_q", "cu_seqlens_k", "bias", "dbias", "mask_tiles_q", "mask_tiles_k", "mask",
            "o_partial", "lse_partial")
#: The fields every call writes (Params.set_per_call): the device pointers, then the dropout state (seed, offset).
PER_CALL = POINTERS + ("dropout_seed", "dropout_offset")

#: (name, C type) in the order of AttnParams. The per-call fields come first so that one write refreshes them all.
FIELDS: tuple[tuple[str, str], ...] = (
    *((name, "ptr") for name in POINTERS),
    ("dropout_seed", "u64"),
    ("dropout_offset", "u64"),
    *((f"{t}_str.{axis}", "i64") for t in STRIDED for axis in ("batch", "seq", "head")),
    ("alibi_batch_stride", "i64"),
    ("heads_per_kv_magic", "u64"),
    ("status", "ptr"),
    *((name, "int") for name in ("batch", "nheads", "nheads_k", "heads_per_kv", "seqlen_q", "seqlen_k", "head_dim",
                                 "row_pitch", "total_q", "kv_splits", "heads_per_split", "window_left",
                                 "window_right", "bias_key_step", "dbias_sums", "num_splits")),
    *((name, "float") for name in ("scale_log2", "softmax_scale", "softcap", "softcap_scale", "alibi_unit",
                                   "bias_unit")),
    ("mask_key_step", "int"),
    ("dropout_threshold", "u32"),
    ("dropout_scale", "float"),
    ("total_k", "int"),
)

# Field names with the nested Strides members flattened ("q_str.seq" -> "q_str_seq").
PARAMS_DTYPE = np.dtype([(name.replace(".", "_"), _C_TYPES[ctype]) for name, ctype in FIELDS], align=True)


class Params:
    """One kernel argument block: static fields set once per plan, pointers refreshed per call."""

    __slots__ = ("array", "kernel_params", "lock", "_bytes", "_argv")

    def __init__(self):
        self.array = np.zeros(1, PARAMS_DTYPE)
        # cuLaunchKernel's kernelParams: an array of one pointer, to this struct. The driver copies the argument
        # bytes when the launch is issued, so the struct may be rewritten for the next call right after.
        self._argv = np.array([self.array.ctypes.data], np.uint64)
        self.kernel_params = self._argv.ctypes.data
        self.lock = threading.Lock()  # one call at a time between writing the pointers and launching
        self._bytes = memoryview(self.array.view(np.uint8))

    def set(self, **fields):
        for name, value in fields.items():
            self.array[0][name] = value

    def set_strides(self, tensor: str, strides_bytes, itemsize: int):
        """(batch, seq, head) byte strides of a (batch, seq, head, dim) array, stored in elements."""
        for axis, stride in zip(("batch", "seq", "head"), strides_bytes[:3]):
            self.array[0][f"{tensor}_str_{axis}"] = stride // itemsize

    def set_per_call(self, values):
        """All PER_CALL fields at once, in order: the POINTERS (0 for the ones a kernel does not use), then the
        dropout seed and offset (0 without dropout)."""
        _PER_CALL_LAYOUT.pack_into(self._bytes, 0, *values)


_PER_CALL_LAYOUT = struct.Struct(f"={len(PER_CALL)}Q")  # the leading u64 fields, native byte order


def division_magic(d: int) -> int:
    """cuda_src/coords.cuh division_magic: floor((2^64 - 1) / d) + 1, wrapped to 64 bits (d = 1 is special-cased
    by the kernels)."""
    return ((2**64 - 1) // d + 1) % 2**64


class TensorMapArgs:
    """The forward kernel's second argument (params.cuh TensorMaps): the tensor maps of q, k, v and an additive bias
    (unused without one: cuda_src/bulk_bias.cuh), 128 bytes each,
    in 64-byte aligned host memory, where the driver writes them in place (cupyflash/_tma.py). ``NO_MAPS`` stands
    for the NoTensorMaps argument of the kernels that copy without them."""

    ARRAYS = ("q", "k", "v", "bias")
    MAP_BYTES = 128

    __slots__ = ("array",)

    def __init__(self):
        raw = np.zeros(len(self.ARRAYS) * self.MAP_BYTES + 64, np.uint8)
        start = -raw.ctypes.data % 64
        self.array = raw[start:start + len(self.ARRAYS) * self.MAP_BYTES]

    @property
    def address(self) -> int:
        return self.array.ctypes.data

    def address_of(self, name: str) -> int:
        """Host address of one array's map."""
        return self.address + self.ARRAYS.index(name) * self.MAP_BYTES


#: The second argument of forward kernels without tensor maps (an empty struct: the driver reads one byte of it).
NO_MAPS = np.zeros(64, np.uint8)

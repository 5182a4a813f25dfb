"""What every launch shares: the plan cache, the params struct filled from a Problem, and input staging.

A call is validated once per distinct (shapes, strides, dtypes, alignment, device, variant arguments); the result
is a plan (config, compiled functions, grid, static params) kept in a small cache, so a repeat call only checks
its cache key, allocates its outputs, writes the device pointers into the params and launches.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from . import _offsets
from ._params import Params, division_magic
from ._validate import _MAX_GRID_YZ, ArraySpec, needs_aligned_copy
from ._bias import bias_fields
from ._dropout import keep_scale, keep_threshold
from .problem import Problem, kernel_window, score_constants

_PLANS_PER_KIND = 256  # least recently used plans are dropped past this many

# Tests set this to fill every output with NaN before launch, so an element the kernel fails to write shows.
poison_outputs = False


def empty(shape, dtype):
    import cupy

    out = cupy.empty(shape, dtype=dtype)
    if poison_outputs:
        # 0x7FFF is a NaN in float16 and in bfloat16; 0x7FFFFFFF in float32.
        out.view(cupy.uint16 if out.itemsize == 2 else cupy.uint32).fill(0x7FFF if out.itemsize == 2
                                                                           else 0x7FFFFFFF)
    return out


class PlanCache:
    """An LRU map from call keys to prepared plans; thread-safe."""

    def __init__(self):
        self._plans = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        if key is None:
            return None
        plan = self._plans.get(key)
        if plan is not None:
            try:
                self._plans.move_to_end(key)
            except KeyError:  # evicted by another thread in between: the plan we hold is still valid
                pass
        return plan

    def put(self, key, plan):
        if key is None:
            return
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > _PLANS_PER_KIND:
                self._plans.popitem(last=False)

    def clear(self):
        with self._lock:
            self._plans.clear()


_ndarray = None  # cupy.ndarray, imported on first use so that CPU-only machines never need CuPy


def array_key(x):
    """What validation reads off an array, as a hashable tuple (None if x is not a CuPy array: slow path)."""
    global _ndarray
    if _ndarray is None:
        import cupy

        _ndarray = cupy.ndarray
    if type(x) is not _ndarray:
        return None
    data = x.data
    return x.shape, x.strides, x.dtype, data.ptr % 16 == 0, data.device_id


_KEY_TYPES = frozenset((int, float, bool, type(None)))


def scalar_key(*values):
    """Plain Python scalars with their types (so True and 1 differ); None for any other kind of value, which then
    takes the validating slow path. Tuples (window_size) must hold ints; TileConfigs are frozen and hashable."""
    types = tuple(map(type, values))
    for t, v in zip(types, values):
        if t not in _KEY_TYPES and not (t is tuple and all(type(e) is int for e in v)) and \
                t.__module__ != "cupyflash.configs":
            return None
    return types, values


def contiguous_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return tuple(strides)


def copy_rows(kernel, src, dst):
    """dst[b, s, h, :] = src[b, s, h, :dst's width], zero past src's width: cuda_src/staging.cu, one launch. Both
    (batch, seq, heads, dim) arrays of 16-bit elements with the same first three extents, any element strides."""
    import numpy as np

    batch, seqlen, nheads = dst.shape[:3]
    rows = batch * seqlen * nheads
    if rows == 0:
        return dst
    s, d = (tuple(np.int64(n // x.itemsize) for n in x.strides[:3]) for x in (src, dst))
    kernel(((rows + 3) // 4,), (128,), (src, dst, np.int64(rows), np.int32(seqlen), np.int32(nheads), *s, *d,
                                        np.int32(src.shape[3]), np.int32(dst.shape[3])))
    return dst


def row_copy_kernel(problem: Problem):
    """The ``copy_rows`` kernel on the problem's device when its head dim needs padding, else None."""
    if problem.padded_head_dim == problem.head_dim:
        return None
    from . import _kernels
    from ._device import device_limits
    from .configs import family_for

    family = family_for(device_limits(problem.device), problem.variant)
    return _kernels.get_function(family, "copy_rows", None, 0, problem.variant, problem.device)


def tf32_rounding_kernel(problem: Problem, family):
    """``family``'s ``round_tf32`` kernel where its kernels take float32 operands rounded to TF32 before them
    (precision "tf32": the tensor cores truncate, cuda_src/mma_tf32.cuh), else None."""
    if problem.variant.precision != "tf32":
        return None
    from . import _kernels

    return _kernels.get_function(family, "round_tf32", None, 0, problem.variant, problem.device)


def operand_staging(spec: ArraySpec, padded_dim: int, pad=None, rounding=None):
    """How an input the products read reaches the kernels: rounded to TF32 into a fresh buffer (``rounding``, from
    tf32_rounding_kernel), or as any input (Staging)."""
    return Tf32Staging(spec, padded_dim, rounding) if rounding is not None else Staging(spec, padded_dim, pad)


class Staging:
    """How one (batch, seq, heads, head_dim) input reaches the kernels: in place, or copied into a fresh contiguous
    buffer (misaligned for 16-byte copies, or a head dim that is not a multiple of 8: zero-padded to one by the
    ``copy_rows`` kernel given as ``pad``)."""

    __slots__ = ("copy", "padded_dim", "kernel_strides", "pad")

    def __init__(self, spec: ArraySpec, padded_dim: int, pad=None):
        self.padded_dim = padded_dim
        self.copy = padded_dim != spec.shape[3] or needs_aligned_copy(spec)
        self.kernel_strides = (contiguous_strides(spec.shape[:3] + (padded_dim,), spec.itemsize) if self.copy
                               else spec.strides)
        self.pad = pad

    def stage(self, x):
        if not self.copy:
            return x
        if self.padded_dim == x.shape[3]:
            return x.copy()  # a fresh allocation is 256-byte aligned (ascontiguousarray may keep a bad offset)
        import cupy

        return copy_rows(self.pad, x, cupy.empty(x.shape[:3] + (self.padded_dim,), x.dtype))


class Tf32Staging:
    """A float32 operand of the TF32 kernels (cuda_src/staging.cu): at precision "tf32" rounded to TF32 into a fresh
    contiguous (batch, seq, heads, padded dim) buffer (``round_tf32``: Q, K, V and dO of the mma_tf32 kernels; Q and
    K of the wgmma forward where they must be copied anyway, its TFLOAT32 maps rounding them otherwise), or
    (``transpose``: V of the wgmma forward; rounded at "tf32", as it is at "highest") written as V^T,
    (batch, heads, padded dim, keys) with the keys padded to a multiple of 32 (``transpose_values``).
    ``map_geometry``: (shape, byte strides) of the staged array as the tensor map reads it, (batch, rows, heads, the
    contiguous dim): V^T's rows are the head dim, its columns the keys."""

    __slots__ = ("copy", "padded_dim", "kernel_strides", "kernel", "transpose", "keys_padded", "map_geometry")

    def __init__(self, spec: ArraySpec, padded_dim: int, kernel, transpose: bool = False):
        batch, seqlen, heads = spec.shape[:3]
        self.copy, self.padded_dim, self.kernel, self.transpose = True, padded_dim, kernel, transpose
        # strides of a (batch, seq, heads, dim) array in the params (the kernel reads V^T through its map only)
        self.kernel_strides = contiguous_strides((batch, seqlen, heads, padded_dim), 4)
        self.keys_padded = -(-seqlen // 32) * 32
        if transpose:
            shape = (batch, padded_dim, heads, self.keys_padded)
            self.map_geometry = (shape, (heads * padded_dim * self.keys_padded * 4, self.keys_padded * 4,
                                         padded_dim * self.keys_padded * 4))
        else:
            self.map_geometry = ((batch, seqlen, heads, padded_dim), self.kernel_strides)

    def stage(self, x):
        import cupy
        import numpy as np

        batch, seqlen, heads, dim = x.shape
        s = tuple(np.int64(n // 4) for n in x.strides[:3])
        if self.transpose:
            out = cupy.empty((batch, heads, self.padded_dim, self.keys_padded), cupy.float32)
            if out.size:
                self.kernel((self.keys_padded // 32, -(-self.padded_dim // 32), batch * heads), (128,),
                            (x, out, np.int32(seqlen), np.int32(heads), *s, np.int32(dim),
                             np.int32(self.padded_dim), np.int32(self.keys_padded)))
            return out
        out = cupy.empty((batch, seqlen, heads, self.padded_dim), cupy.float32)
        rows = batch * seqlen * heads
        if rows:
            d = tuple(np.int64(n // 4) for n in out.strides[:3])
            self.kernel(((rows + 3) // 4,), (128,), (x, out, np.int64(rows), np.int32(seqlen), np.int32(heads), *s,
                                                     *d, np.int32(dim), np.int32(self.padded_dim)))
        return out


def static_params(problem: Problem) -> Params:
    """The params fields that depend only on the problem (not on pointers or strides)."""
    params = Params()
    left, right = kernel_window(problem)
    params.set(batch=problem.batch, nheads=problem.nheads, nheads_k=problem.nheads_k,
               heads_per_kv=problem.heads_per_kv, heads_per_kv_magic=division_magic(problem.heads_per_kv),
               kv_splits=1, heads_per_split=problem.heads_per_kv, total_q=problem.total_q,
               total_k=problem.total_k,
               seqlen_q=problem.seqlen_q, seqlen_k=problem.seqlen_k,
               head_dim=problem.padded_head_dim, row_pitch=row_pitch(problem), window_left=left,
               window_right=right, alibi_batch_stride=problem.alibi_batch_stride, **score_constants(problem),
               **bias_fields(problem.bias), **bias_fields(problem.mask, "mask"))
    if problem.variant.rows == "packed":  # where blocks report offsets they had to clamp
        params.set(status=_offsets.status_pointer(problem.device))
    if problem.dropout_p:
        params.set(dropout_threshold=keep_threshold(problem.dropout_p), dropout_scale=keep_scale(problem.dropout_p))
    return params


def row_pitch(problem: Problem) -> int:
    """Floats per (batch, head) row of the backward's lse2 and delta: a multiple of 4 for 16-byte copies."""
    return (problem.seqlen_q + 3) // 4 * 4


def key_grid(problem: Problem, block_n: int, kv_splits: int):
    """The dK/dV kernel's grid: (key tiles, K/V heads x splits, batches), or with dbias (coords.cuh KeyBlock)
    (batches, key tiles, slots), so that the batches reading one bias tile and adding into one dbias tile run
    together (L2)."""
    tiles, slots = math.ceil(problem.seqlen_k / block_n), problem.nheads_k * kv_splits
    return (problem.batch, tiles, slots) if problem.variant.dbias else (tiles, slots, problem.batch)


def query_grid(problem: Problem, block_m: int, splits: int = 1):
    """The forward's and dQ kernel's grid: (query tiles, heads, batches), or with a bias (the kernels that add one,
    coords.cuh QueryBlock) (batches, query tiles, heads), so that the batches reading one tile of a bias they share
    run together and read it from L2. H100, bf16, pair bias (1, H, S, S), 16k tokens: docs/performance.md, ninth
    session."""
    tiles = math.ceil(problem.seqlen_q / block_m) * splits  # split keys: query tile * splits + split (split_kv.cuh)
    if problem.bias is None:
        return tiles, problem.nheads, problem.batch
    if tiles > _MAX_GRID_YZ:
        raise ValueError(f"with a bias, seqlen_q may be at most {_MAX_GRID_YZ * block_m} ({_MAX_GRID_YZ} query tiles "
                         f"of {block_m} rows, the grid's y dimension); got seqlen_q {problem.seqlen_q}")
    return problem.batch, tiles, problem.nheads


class Launch:
    """One kernel launch prepared once: function, grid, block, dynamic shared memory and the params block, issued
    with a single cuLaunchKernel. (CuPy's generic launch path inspects and packs its arguments on every call,
    several microseconds a launch on the H100 machine; this path does nothing per call but the launch.)"""

    __slots__ = ("function", "grid", "threads", "smem", "_handle", "_params", "_argv", "_launch")

    def __init__(self, function, device_id: int, grid, threads: int, smem: int, params: Params, second=None):
        """``second``: a kernel's second argument (the forward's tensor maps, a host array), or None for the
        kernels that take the params alone."""
        import cupy
        from cupy_backends.cuda.api import driver

        self.function = function  # a cupy.RawKernel: holds the module, so the handle below stays valid
        self.grid = tuple(grid) + (1,) * (3 - len(grid))  # within CUDA's limits: _validate checks heads, batch
        self.threads, self.smem = threads, smem
        with cupy.cuda.Device(device_id):  # the RawKernel's CUfunction for that device
            self._handle = function.kernel.ptr
        self._argv = None
        self._params = params.kernel_params
        if second is not None:  # kernelParams: the params struct's address, then the second argument's
            self._argv = np.array([params.array.ctypes.data, second.ctypes.data], np.uint64), second
            self._params = self._argv[0].ctypes.data
        self._launch = driver.launchKernel

    def __call__(self, stream_ptr: int) -> None:
        gx, gy, gz = self.grid
        self._launch(self._handle, gx, gy, gz, self.threads, 1, 1, self.smem, stream_ptr, self._params, 0)


def current_stream_ptr() -> int:
    import cupy

    return cupy.cuda.get_current_stream().ptr


def ptr(x) -> int:
    return 0 if x is None else x.data.ptr


def dropout_fields(dropout) -> tuple:
    """The per-call params fields of a DropoutState (cupyflash._dropout): (seed, offset), or zeros without."""
    return (0, 0) if dropout is None else (dropout.seed, dropout.offset)

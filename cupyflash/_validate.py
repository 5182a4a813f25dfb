"""Input checks that run before any kernel launch.

Checks work on :class:`ArraySpec` (shape, strides, dtype, device, address) so that every rule is unit-tested
on machines without a GPU; :func:`spec_of` reads one off a CuPy array.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .configs import MAX_HEAD_DIM

SUPPORTED_DTYPES = ("float16", "bfloat16")
_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged
_MAX_GRID_YZ = 65535  # heads and batch index the grid's y and z dimensions


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple
    strides: tuple  # bytes, as CuPy and NumPy report them
    dtype: str
    itemsize: int
    device: int
    ptr: int


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads: int
    head_dim: int
    dtype: str
    device: int


def as_cuda_array(x, name: str):
    """``x`` as a cupy.ndarray without copying: CuPy arrays pass through, other CUDA arrays come in via DLPack."""
    import cupy

    if isinstance(x, cupy.ndarray):
        return x
    dlpack_device = getattr(x, "__dlpack_device__", None)
    where = ""
    if dlpack_device is not None:
        dev_type = int(dlpack_device()[0])
        if dev_type in _DLPACK_CUDA_DEVICES:
            try:
                return cupy.from_dlpack(x)
            except Exception as exc:  # dtype CuPy cannot represent, for instance
                raise TypeError(f"{name}: could not import the CUDA array through DLPack: {exc}") from exc
        where = f" (its DLPack device type is {dev_type}, not CUDA)"
    raise TypeError(f"{name} must be a CUDA array (cupy.ndarray, or any array exporting CUDA memory through "
                    f"DLPack); got {type(x).__module__}.{type(x).__qualname__}{where}")


def spec_of(x) -> ArraySpec:
    return ArraySpec(tuple(x.shape), tuple(x.strides), str(x.dtype), x.itemsize, x.device.id, x.data.ptr)


def check_qkv(q: ArraySpec, k: ArraySpec, v: ArraySpec) -> AttentionShape:
    """Shape, dtype, layout and device rules for q (B, Sq, H, D) and k, v (B, Sk, H, D)."""
    named = (("q", q), ("k", k), ("v", v))
    for name, a in named:
        if len(a.shape) != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, seqlen, nheads, headdim); got shape {a.shape}")
        if a.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16 or bfloat16 (ml_dtypes.bfloat16); got {a.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one GPU; got devices q {q.device}, k {k.device}, v {v.device}")

    batch, seqlen_q, nheads, head_dim = q.shape
    for name, a in (("k", k), ("v", v)):
        if a.shape[0] != batch:
            raise ValueError(f"batch size of {name} ({a.shape[0]}) differs from q's ({batch})")
        if a.shape[2] != nheads:
            raise ValueError(f"nheads of {name} ({a.shape[2]}) differs from q's ({nheads}); "
                             f"grouped-query attention is not supported yet")
        if a.shape[3] != head_dim:
            raise ValueError(f"head dim of {name} ({a.shape[3]}) differs from q's ({head_dim})")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same seqlen; got {k.shape[1]} and {v.shape[1]}")
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be a multiple of 8 between 8 and {MAX_HEAD_DIM}; got {head_dim}")
    for name, a in named:
        if math.prod(a.shape) and a.strides[3] != a.itemsize:  # an empty array's strides are arbitrary
            raise ValueError(f"{name}'s last dimension (head dim) must be contiguous; its stride is "
                             f"{a.strides[3] // a.itemsize} elements (any other strides are fine)")
    if nheads > _MAX_GRID_YZ or batch > _MAX_GRID_YZ:
        raise ValueError(f"batch and nheads must each be at most {_MAX_GRID_YZ}; got {batch} and {nheads}")
    return AttentionShape(batch, seqlen_q, k.shape[1], nheads, head_dim, q.dtype, q.device)


def needs_aligned_copy(a: ArraySpec) -> bool:
    """Kernels copy 16 bytes at a time: the address and every stride that moves (size > 1) must be multiples
    of 16 bytes. Arrays that are not get one contiguous copy."""
    if a.ptr % 16:
        return True
    return any(s % 16 for s, n in zip(a.strides[:3], a.shape[:3]) if n > 1)


def check_softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale must be a real number or None; got {softmax_scale!r}")
    scale = float(softmax_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"softmax_scale must be finite and positive; got {softmax_scale!r}")
    return scale


def check_backward_inputs(shape: AttentionShape, q: ArraySpec, dout: ArraySpec, out: ArraySpec,
                          lse: ArraySpec) -> None:
    """dout and out are laid out like q (any strides, head dim contiguous); lse is float32 (batch, nheads,
    seqlen_q), as flash_attn_func(..., return_lse=True) returns them."""
    for name, a in (("dout", dout), ("out", out)):
        if a.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {q.shape}; got {a.shape}")
        if a.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}; got {a.dtype}")
        if a.device != q.device:
            raise ValueError(f"{name} must be on q's GPU {q.device}; got device {a.device}")
        if math.prod(a.shape) and a.strides[3] != a.itemsize:
            raise ValueError(f"{name}'s last dimension (head dim) must be contiguous; its stride is "
                             f"{a.strides[3] // a.itemsize} elements")
    expected = (shape.batch, shape.nheads, shape.seqlen_q)
    if lse.shape != expected:
        raise ValueError(f"lse must have shape (batch, nheads, seqlen_q) = {expected}; got {lse.shape}")
    if lse.dtype != "float32":
        raise TypeError(f"lse must be float32; got {lse.dtype}")
    if lse.device != q.device:
        raise ValueError(f"lse must be on q's GPU {q.device}; got device {lse.device}")


def check_grad_output(name: str, grad: ArraySpec, like: ArraySpec) -> None:
    """A caller-provided gradient buffer must match the input it is the gradient of."""
    if grad.shape != like.shape or grad.dtype != like.dtype or grad.device != like.device:
        raise ValueError(f"{name} must match its input: shape {like.shape}, dtype {like.dtype}, device "
                         f"{like.device}; got shape {grad.shape}, dtype {grad.dtype}, device {grad.device}")
    if math.prod(grad.shape) and grad.strides[3] != grad.itemsize:
        raise ValueError(f"{name}'s last dimension (head dim) must be contiguous")

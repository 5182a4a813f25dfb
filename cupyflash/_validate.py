"""Input checks that run before any kernel launch.

Checks work on :class:`ArraySpec` (shape, strides, dtype, device, address) so that every rule is unit-tested
on machines without a GPU; :func:`spec_of` reads one off a CuPy array.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .configs import MAX_HEAD_DIM
from .problem import (PRECISIONS, BiasLayout, Problem, Variant, default_softmax_scale, mask_kind,
                      normalize_window)

SUPPORTED_DTYPES = ("float16", "bfloat16", "float32")
BIAS_DTYPES = ("float16", "bfloat16", "float32")
_MAX_GRID_YZ = 65535  # heads and batch index the grid's y and z dimensions (query tiles too with a bias)
_MAX_SEQLEN = 2**30  # the kernels index rows and compare key - query distances in 32-bit ints
LAYOUT = "(batch, seqlen, nheads, headdim)"


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
    nheads_k: int = -1  # -1: same as nheads

    def __post_init__(self):
        if self.nheads_k == -1:
            object.__setattr__(self, "nheads_k", self.nheads)


def as_cuda_array(x, name: str):
    """``x`` as a cupy.ndarray without copying: CuPy arrays pass through, other CUDA arrays come in through DLPack
    or ``__cuda_array_interface__`` (cupyflash._interop)."""
    from ._interop import to_cupy

    a = to_cupy(x, name)
    if a is not None:
        return a
    dlpack_device = getattr(x, "__dlpack_device__", None)
    where = "" if dlpack_device is None else f" (its DLPack device type is {int(dlpack_device()[0])}, not CUDA)"
    raise TypeError(f"{name} must be a CUDA array (cupy.ndarray, or any array exporting CUDA memory through "
                    f"DLPack or __cuda_array_interface__); got {type(x).__module__}.{type(x).__qualname__}{where}")


def spec_of(x) -> ArraySpec:
    return ArraySpec(tuple(x.shape), tuple(x.strides), str(x.dtype), x.itemsize, x.device.id, x.data.ptr)


def check_qkv(q: ArraySpec, k: ArraySpec, v: ArraySpec) -> AttentionShape:
    """Shape, dtype, layout and device rules for q (B, Sq, H, D) and k, v (B, Sk, H_k, D), H a multiple of H_k."""
    named = (("q", q), ("k", k), ("v", v))
    for name, a in named:
        if len(a.shape) != 4:
            raise ValueError(f"{name} must have 4 dimensions {LAYOUT}; got shape {a.shape}")
        if a.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 (ml_dtypes.bfloat16) or float32; got {a.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one GPU; got devices q {q.device}, k {k.device}, v {v.device}")

    batch, seqlen_q, nheads, head_dim = q.shape
    layouts = f"(layout {LAYOUT}: q {q.shape}, k {k.shape}, v {v.shape})"
    for name, a in (("k", k), ("v", v)):
        if a.shape[0] != batch:
            raise ValueError(f"batch size of {name} ({a.shape[0]}) differs from q's ({batch}) {layouts}")
        if a.shape[3] != head_dim:
            raise ValueError(f"head dim of {name} ({a.shape[3]}) differs from q's ({head_dim}) {layouts}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same seqlen; got {k.shape[1]} and {v.shape[1]} {layouts}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same nheads; got {k.shape[2]} and {v.shape[2]} {layouts}")
    nheads_k = k.shape[2]
    if nheads_k == 0 or nheads % nheads_k:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of k and v ({nheads_k}) for "
                         f"grouped-query attention {layouts}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be between 1 and {MAX_HEAD_DIM}; got {head_dim} {layouts}")
    for name, a in named:
        if math.prod(a.shape) and a.strides[3] != a.itemsize:  # an empty array's strides are arbitrary
            raise ValueError(f"{name}'s last dimension (head dim) must be contiguous; its stride is "
                             f"{a.strides[3] // a.itemsize} elements (any other strides are fine)")
    if nheads > _MAX_GRID_YZ or batch > _MAX_GRID_YZ:
        raise ValueError(f"batch and nheads must each be at most {_MAX_GRID_YZ}; got {batch} and {nheads}")
    if max(seqlen_q, k.shape[1]) >= _MAX_SEQLEN:
        raise ValueError(f"seqlens must be below {_MAX_SEQLEN}; got {seqlen_q} and {k.shape[1]}")
    return AttentionShape(batch, seqlen_q, k.shape[1], nheads, head_dim, q.dtype, q.device, nheads_k)


def check_window(window_size) -> tuple:
    """flash-attn's window_size: (left, right), each -1 (unbounded) or a non-negative int."""
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise TypeError(f"window_size must be a pair (left, right); got {window_size!r}") from None
    for side, value in (("left", left), ("right", right)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"window_size {side} must be an int (-1 for unbounded); got {value!r}")
        if value < -1:
            raise ValueError(f"window_size {side} must be -1 (unbounded) or >= 0; got {value}")
    return int(left), int(right)


def check_softcap(softcap) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a real number (0 for off); got {softcap!r}")
    value = float(softcap)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"softcap must be finite and >= 0 (0 for off); got {softcap!r}")
    return value


def check_precision(precision, dtype: str) -> str:
    """The kernels' precision: for float32 inputs "highest" (the default: three TF32 passes) or "tf32" (one pass);
    16-bit inputs have one way to be multiplied, and take None only."""
    if dtype != "float32":
        if precision is not None:
            raise ValueError(f"precision applies to float32 inputs ({' or '.join(map(repr, PRECISIONS))}); "
                             f"{dtype} inputs are multiplied in {dtype} with float32 sums: pass precision=None, "
                             f"got {precision!r}")
        return ""
    if precision is None:
        return PRECISIONS[0]
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))} or None (= "
                         f"{PRECISIONS[0]!r}) for float32 inputs; got {precision!r}")
    return precision


def check_dropout(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a number in [0, 1); got {dropout_p!r}")
    return float(dropout_p)


def check_alibi(slopes: ArraySpec, shape: AttentionShape) -> int:
    """alibi_slopes: float32 (nheads,) or (batch or 1, nheads) on q's GPU, slopes contiguous; returns the batch stride
    in elements (0 for one shared vector)."""
    if slopes.dtype != "float32":
        raise TypeError(f"alibi_slopes must be float32; got {slopes.dtype}")
    if slopes.shape not in ((shape.nheads,), (shape.batch, shape.nheads), (1, shape.nheads)):
        raise ValueError(f"alibi_slopes must have shape (nheads,) = ({shape.nheads},) or (batch, nheads) = "
                         f"({shape.batch}, {shape.nheads}); got {slopes.shape}")
    if slopes.device != shape.device:
        raise ValueError(f"alibi_slopes must be on q's GPU {shape.device}; got device {slopes.device}")
    if shape.nheads > 1 and slopes.strides[-1] != 4:
        raise ValueError(f"alibi_slopes' last dimension must be contiguous; its stride is {slopes.strides[-1]} bytes")
    if len(slopes.shape) == 2 and slopes.shape[0] > 1:
        return slopes.strides[0] // 4
    return 0


def check_mask_dtype(dtype: str) -> None:
    if dtype != "bool":
        raise TypeError(f"mask must be bool (True = may attend); got {dtype}")


def check_bias(bias: ArraySpec, shape: AttentionShape, name: str = "bias") -> BiasLayout:
    """bias: float16, bfloat16 or float32 on q's GPU, broadcastable to (batch, nheads, seqlen_q, seqlen_k) with
    every dim either full or 1 (NumPy rules: fewer dims are leading 1s), any strides. Returns how the kernels read
    it: broadcast dims (size 1 or stride 0) at stride 0, and whether 16-byte copies need a padded copy of it."""
    full = (shape.batch, shape.nheads, shape.seqlen_q, shape.seqlen_k)
    target = f"(batch, nheads, seqlen_q, seqlen_k) = {full}"
    if name == "mask":
        check_mask_dtype(bias.dtype)
    if name == "bias" and bias.dtype not in BIAS_DTYPES:
        raise TypeError(f"bias must be float16, bfloat16 or float32; got {bias.dtype}")
    if bias.device != shape.device:
        raise ValueError(f"{name} must be on q's GPU {shape.device}; got device {bias.device}")
    if len(bias.shape) > 4:
        raise ValueError(f"{name} must have at most 4 dimensions, broadcastable to {target}; got shape {bias.shape}")
    pad = 4 - len(bias.shape)
    dims_given, strides = (1,) * pad + tuple(bias.shape), (0,) * pad + tuple(bias.strides)
    for axis, (n, want) in enumerate(zip(dims_given, full)):
        if n not in (1, want):
            raise ValueError(f"{name} of shape {bias.shape} does not broadcast to {target}: each dim must be full "
                             f"or 1, dim {axis - pad} is {n}")
    # broadcast dims: size 1 (or nothing to broadcast: size 0 problems) or stride 0 (a broadcast_to view)
    moving = tuple(n > 1 and st != 0 for n, st in zip(dims_given, strides))
    dims = tuple(n if m else 1 for n, m in zip(full, moving))
    elem = tuple(st // bias.itemsize if m else 0 for st, m in zip(strides, moving))
    chunk = 16 // bias.itemsize
    copy = moving[3] and (elem[3] != 1 or bias.ptr % 16 != 0 or shape.seqlen_k % chunk != 0
                          or any(st % chunk for st in elem[:3]))
    if copy:  # contiguous with rows padded to whole 16-byte chunks (cupyflash._bias.readable)
        row = -(-shape.seqlen_k // chunk) * chunk
        sizes = (dims[1] * dims[2] * row, dims[2] * row, row, 1)
        elem = tuple(st if m else 0 for st, m in zip(sizes, moving))
    return BiasLayout(bias.dtype, bias.itemsize, dims, elem, copy, tuple(bias.shape))


def describe(q: ArraySpec, k: ArraySpec, v: ArraySpec, *, softmax_scale=None, causal=False,
             window_size=(-1, -1), softcap=0.0, alibi_slopes: ArraySpec | None = None, dropout_p=0.0,
             bias: ArraySpec | None = None, mask: ArraySpec | None = None, precision=None) -> Problem:
    """Every check of a call's arguments, and the frozen Problem they describe. The kernels read a boolean mask
    like a bias, as 0 / -inf, beside the additive bias if there is one."""
    shape = check_qkv(q, k, v)
    dropout_p = check_dropout(dropout_p)
    if not isinstance(causal, (bool, numbers.Integral)):
        raise TypeError(f"causal must be a bool; got {causal!r}")
    causal = bool(causal)
    window = normalize_window(check_window(window_size), causal, shape.seqlen_q, shape.seqlen_k)
    cap = check_softcap(softcap)
    alibi_stride = 0 if alibi_slopes is None else check_alibi(alibi_slopes, shape)
    bias_layout = None if bias is None else check_bias(bias, shape)
    mask_layout = None if mask is None else check_bias(mask, shape, "mask")
    variant = Variant(shape.dtype, mask_kind(causal, window), softcap=cap > 0, alibi=alibi_slopes is not None,
                      bias="none" if bias_layout is None else bias_layout.dtype, bool_mask=mask_layout is not None,
                      precision=check_precision(precision, shape.dtype), dropout=dropout_p > 0)
    return Problem(shape.batch, shape.seqlen_q, shape.seqlen_k, shape.nheads, shape.nheads_k, shape.head_dim,
                   shape.device, check_softmax_scale(softmax_scale, shape.head_dim), causal, window, cap,
                   alibi_stride, variant, bias=bias_layout, mask=mask_layout, dropout_p=dropout_p)


def needs_aligned_copy(a: ArraySpec) -> bool:
    """Kernels copy 16 bytes at a time: the address and every stride that moves (size > 1) must be multiples
    of 16 bytes. Arrays that are not get one contiguous copy."""
    if a.ptr % 16:
        return True
    return any(s % 16 for s, n in zip(a.strides[:3], a.shape[:3]) if n > 1)


def check_softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return default_softmax_scale(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale must be a real number or None; got {softmax_scale!r}")
    scale = float(softmax_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"softmax_scale must be finite and positive; got {softmax_scale!r}")
    return scale


def check_backward_inputs(problem: Problem, q: ArraySpec, dout: ArraySpec, out: ArraySpec,
                          lse: ArraySpec) -> None:
    """dout and out are laid out like q (any strides, head dim contiguous); lse is float32 (batch, nheads,
    seqlen_q), or (nheads, total_q) for packed rows, as the forward returns it."""
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
    packed = problem.variant.rows == "packed"
    expected = (problem.nheads, problem.total_q) if packed else (problem.batch, problem.nheads, problem.seqlen_q)
    if lse.shape != expected:
        layout = "(nheads, total_q)" if packed else "(batch, nheads, seqlen_q)"
        raise ValueError(f"lse must have shape {layout} = {expected}; got {lse.shape}")
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


VARLEN_LAYOUT = "(total_q, nheads, headdim) for q and (total_k, nheads_k, headdim) for k, v"


def _packed_as_batch_of_one(a: ArraySpec, name: str) -> ArraySpec:
    """A packed (total, heads, dim) array seen as the dense (1, total, heads, dim) that check_qkv takes."""
    if len(a.shape) != 3:
        raise ValueError(f"{name} must have 3 dimensions {VARLEN_LAYOUT}; got shape {a.shape}")
    return ArraySpec((1,) + a.shape, (0,) + a.strides, a.dtype, a.itemsize, a.device, a.ptr)


def check_cu_seqlens(cu_q: ArraySpec, cu_k: ArraySpec, device: int) -> int:
    """cu_seqlens_q and cu_seqlens_k: int32 vectors of batch + 1 offsets on q's GPU; returns batch."""
    for name, a in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if len(a.shape) != 1 or a.shape[0] < 1:
            raise ValueError(f"{name} must be a 1-dim array of batch + 1 offsets; got shape {a.shape}")
        if a.dtype != "int32":
            raise TypeError(f"{name} must be int32; got {a.dtype}")
        if a.device != device:
            raise ValueError(f"{name} must be on q's GPU {device}; got device {a.device}")
        if a.shape[0] > 1 and a.strides[0] != 4:
            raise ValueError(f"{name} must be contiguous; its stride is {a.strides[0]} bytes")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1); got "
                         f"{cu_q.shape[0]} and {cu_k.shape[0]}")
    return cu_q.shape[0] - 1


def check_cu_seqlens_values(name: str, offsets, total: int, max_seqlen: int) -> None:
    """flash-attn's contract for one offsets vector (host ints): starts at 0, never decreases, ends at the packed
    tensor's row count, and no sequence is longer than max_seqlen."""
    if offsets[0] != 0:
        raise ValueError(f"{name} must start at 0; got {offsets[0]}")
    lengths = [b - a for a, b in zip(offsets, offsets[1:])]
    if any(n < 0 for n in lengths):
        i = next(i for i, n in enumerate(lengths) if n < 0)
        raise ValueError(f"{name} must not decrease; entry {i + 1} ({offsets[i + 1]}) < entry {i} ({offsets[i]})")
    if offsets[-1] != total:
        raise ValueError(f"{name} must end at the number of packed rows {total}; got {offsets[-1]}")
    if lengths and max(lengths) > max_seqlen:
        raise ValueError(f"{name} holds a sequence of {max(lengths)} rows, longer than max_seqlen = {max_seqlen}")


def describe_varlen(q: ArraySpec, k: ArraySpec, v: ArraySpec, cu_q: ArraySpec, cu_k: ArraySpec,
                    max_seqlen_q, max_seqlen_k, *, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes: ArraySpec | None = None, dropout_p=0.0, precision=None) -> Problem:
    """describe() for flash-attn's packed variable-length layout (the cu_seqlens values are checked separately,
    since they change from call to call): batch = number of sequences, seqlen_q and seqlen_k = the max_seqlens."""
    q4, k4, v4 = (_packed_as_batch_of_one(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    dense = describe(q4, k4, v4, softmax_scale=softmax_scale, causal=causal, window_size=(-1, -1),
                     softcap=softcap, dropout_p=dropout_p, precision=precision)
    batch = check_cu_seqlens(cu_q, cu_k, dense.device)
    for name, n in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise TypeError(f"{name} must be a non-negative int; got {n!r}")
        if n >= _MAX_SEQLEN:
            raise ValueError(f"{name} must be below {_MAX_SEQLEN}; got {n}")
    if batch > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} sequences per call; got {batch}")
    shape = AttentionShape(batch, int(max_seqlen_q), int(max_seqlen_k), dense.nheads, dense.head_dim, q.dtype,
                           dense.device, dense.nheads_k)
    window = normalize_window(check_window(window_size), dense.causal, shape.seqlen_q, shape.seqlen_k)
    alibi_stride = 0 if alibi_slopes is None else check_alibi(alibi_slopes, shape)
    variant = Variant(q.dtype, mask_kind(dense.causal, window), softcap=dense.softcap > 0,
                      alibi=alibi_slopes is not None, rows="packed", precision=dense.variant.precision,
                      dropout=dense.variant.dropout)
    return dataclasses.replace(dense, batch=batch, seqlen_q=shape.seqlen_q, seqlen_k=shape.seqlen_k, window=window,
                               alibi_batch_stride=alibi_stride, variant=variant, total_q=q.shape[0],
                               total_k=k.shape[0])

"""The forward pass: validation, tile dispatch and launch."""
from __future__ import annotations

import math

import numpy as np

from . import _kernels
from ._device import device_limits
from ._validate import (as_cuda_array, check_qkv, check_softmax_scale, needs_aligned_copy, spec_of)
from .configs import (TileConfig, check_fwd_config, fwd_smem_bytes, kernel_head_dim, select_fwd_config)

LOG2E = 1.4426950408889634

# Tests set this to fill every output with NaN before launch, so an element the kernel fails to write shows.
_poison_outputs = False


def _empty(shape, dtype):
    import cupy

    out = cupy.empty(shape, dtype=dtype)
    if _poison_outputs:
        # 0x7FFF is a NaN in float16 and in bfloat16; 0x7FFFFFFF in float32.
        out.view(cupy.uint16 if out.itemsize == 2 else cupy.uint32).fill(0x7FFF if out.itemsize == 2
                                                                           else 0x7FFFFFFF)
    return out


def _prepare(q, k, v):
    q, k, v = as_cuda_array(q, "q"), as_cuda_array(k, "k"), as_cuda_array(v, "v")
    shape = check_qkv(spec_of(q), spec_of(k), spec_of(v))
    return q, k, v, shape


def select_config_for(q, k, v, causal: bool = False) -> TileConfig:
    """The tile configuration :func:`flash_attn_func` would use for these inputs."""
    q, k, v, shape = _prepare(q, k, v)
    return select_fwd_config(device_limits(shape.device), shape.head_dim, causal)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, *, return_lse=False, config=None):
    """Exact softmax attention, computed tile by tile without materialising the score matrix.

    Args:
        q: (batch, seqlen_q, nheads, headdim) CUDA array, float16 or bfloat16 (``ml_dtypes.bfloat16``).
        k, v: (batch, seqlen_k, nheads, headdim), same dtype and device as q. Any strides are accepted as long
            as the head dim is contiguous (a (B, H, S, D) array transposed to (B, S, H, D) is used in place).
        softmax_scale: multiplier of Q K^T before the softmax; default 1/sqrt(headdim). Must be positive.
        causal: mask keys after the query's position, aligned to the bottom-right corner of the score matrix
            when seqlen_q != seqlen_k: query i sees key j iff j <= i + seqlen_k - seqlen_q. For seqlen_q=2,
            seqlen_k=4 (x = visible)::

                keys ->  0 1 2 3
                q0       x x x .
                q1       x x x x

            A query row that sees no key (only possible when seqlen_q > seqlen_k) gets output 0, lse -inf.
        return_lse: also return the log-sum-exp of the scaled scores.
        config: force a :class:`~cupyflash.TileConfig` (a candidate from the table for this head dim that
            fits the device); default: the dispatcher's choice.

    Returns:
        out, a new contiguous (batch, seqlen_q, nheads, headdim) array of q's dtype; with ``return_lse`` also
        lse, float32 (batch, nheads, seqlen_q), natural log. Runs on the current CuPy stream of q's device.
    """
    import cupy

    q, k, v, shape = _prepare(q, k, v)
    scale = check_softmax_scale(softmax_scale, shape.head_dim)
    limits = device_limits(shape.device)
    if config is None:
        config = select_fwd_config(limits, shape.head_dim, causal)
    else:
        check_fwd_config(config, limits, shape.head_dim)
    kd = kernel_head_dim(shape.head_dim)
    b, sq, sk, h, d = shape.batch, shape.seqlen_q, shape.seqlen_k, shape.nheads, shape.head_dim

    with cupy.cuda.Device(shape.device):
        # A fresh allocation is 256-byte aligned; ascontiguousarray would hand back a misaligned contiguous view.
        q, k, v = (x.copy() if needs_aligned_copy(spec_of(x)) else x for x in (q, k, v))
        out = _empty((b, sq, h, d), q.dtype)
        lse = _empty((b, h, sq), cupy.float32)
        if out.size:
            fn = _kernels.fwd_function(config, kd, shape.dtype, bool(causal), shape.device)
            strides = [np.int64(s // x.itemsize) for x in (q, k, v, out) for s in x.strides[:3]]
            fn((math.ceil(sq / config.block_m), h, b), (config.warps * 32,),
               (q, k, v, out, lse, *strides, np.int32(h), np.int32(sq), np.int32(sk), np.int32(d),
                np.float32(scale * LOG2E)),
               shared_mem=fwd_smem_bytes(config, kd))
    return (out, lse) if return_lse else out

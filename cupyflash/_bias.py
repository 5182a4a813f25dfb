"""The additive bias as the kernels read it (cuda_src/bias.cuh): params fields and, where needed, a padded copy."""
from __future__ import annotations

from .problem import BiasLayout


def bias_fields(layout: BiasLayout | None) -> dict:
    """The params fields of a bias layout (all 0 without a bias): element strides, 0 where broadcast."""
    if layout is None:
        return dict(bias_str_batch=0, bias_str_head=0, bias_str_seq=0, bias_key_step=0)
    batch, head, query, _ = layout.strides
    return dict(bias_str_batch=batch, bias_str_head=head, bias_str_seq=query, bias_key_step=layout.key_step)


def readable(layout: BiasLayout, bias):
    """The array whose memory the kernels read: ``bias`` itself, or (``layout.copy``) its own data (broadcast dims
    at size 1) copied into a contiguous array with rows padded to whole 16-byte chunks, as layout.strides says."""
    if not layout.copy:
        return bias
    import cupy

    full = bias[(None,) * (4 - bias.ndim)]
    own = full[tuple(slice(None) if d > 1 else slice(0, 1) for d in layout.dims)]
    seqlen_k = own.shape[3]
    chunk = 16 // layout.itemsize
    dst = cupy.empty(layout.dims[:3] + (-(-seqlen_k // chunk) * chunk,), bias.dtype)
    dst[..., :seqlen_k] = own
    dst[..., seqlen_k:] = 0
    return dst

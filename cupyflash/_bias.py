"""The additive bias and the boolean mask as the kernels read them (cuda_src/bias.cuh): params fields and, where
needed, a padded copy."""
from __future__ import annotations

from .problem import BiasLayout


def bias_fields(layout: BiasLayout | None, name: str = "bias") -> dict:
    """The params fields of a bias (or, ``name="mask"``, a mask) layout, all 0 without one: element strides, 0
    where broadcast."""
    batch, head, query, _ = (0,) * 4 if layout is None else layout.strides
    return {f"{name}_str_batch": batch, f"{name}_str_head": head, f"{name}_str_seq": query,
            f"{name}_key_step": 0 if layout is None else layout.key_step}


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

"""PyTorch autograd for cupyflash: flash-attn's ``flash_attn_func`` and ``flash_attn_varlen_func`` on CUDA
tensors, differentiable in q, k, v (and ``bias``), as ``torch.autograd.Function``s.

``from cupyflash.torch import flash_attn_func`` is a drop-in for ``from flash_attn import flash_attn_func``. The
kernels run on PyTorch's current stream; outputs and gradients are tensors sharing memory with CuPy's results
(allocated from CuPy's memory pool, not PyTorch's caching allocator). Importing this module imports torch;
``import cupyflash`` alone never does.
"""
from __future__ import annotations

try:
    import torch
except ImportError as exc:
    raise ImportError("cupyflash.torch needs PyTorch (pip install torch); the rest of cupyflash works without it, "
                      "on CuPy arrays or any CUDA array") from exc

from ._adapters import DenseCall, PackedCall

__all__ = ["flash_attn_func", "flash_attn_varlen_func"]


class _Attention(torch.autograd.Function):
    """out = attention(q, k, v, bias) for one DenseCall or PackedCall; lse (and probs) are not differentiable."""

    @staticmethod
    def forward(ctx, call, q, k, v, bias):
        out, lse, probs = call.forward(q, k, v, bias)
        ctx.call = call
        ctx.save_for_backward(q, k, v, out, lse, bias)
        ctx.mark_non_differentiable(*((lse,) if probs is None else (lse, probs)))
        return (out, lse) if probs is None else (out, lse, probs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, *unused):  # the gradients of lse (and probs) are None or zero: not differentiable
        q, k, v, out, lse, bias = ctx.saved_tensors
        dq, dk, dv, dbias = ctx.call.backward(_last_dim_contiguous(dout), q, k, v, out, lse, bias,
                                              ctx.needs_input_grad[4])
        return None, dq, dk, dv, None if dbias is None else dbias.to(bias.dtype)


def _last_dim_contiguous(x):
    """x, or a contiguous copy if its last dim is not: autograd's dout can be any view (an expand of ones after
    .sum(), stride 0), and flash-attn takes such q, k, v too."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _apply(call, q, k, v, bias, return_attn_probs):
    out, lse, *probs = _Attention.apply(call, *map(_last_dim_contiguous, (q, k, v)), bias)
    return (out, lse, *probs) if return_attn_probs else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, bias=None, mask=None,
                    precision=None, rng_state=None, generator=None):
    """:func:`cupyflash.flash_attn_func` on torch tensors, differentiable in q, k, v and ``bias``.

    flash-attn's signature (q, k, v: (batch, seqlen, nheads, headdim) float16, bfloat16 or float32 CUDA tensors;
    ``precision`` for float32 as in :func:`cupyflash.flash_attn_func`), plus
    keyword-only ``bias`` (additive, broadcastable to (batch, nheads, seqlen_q, seqlen_k); its gradient is
    computed when it requires one, summed over its broadcast dims) and ``mask`` (boolean, True = may attend, or a
    :func:`cupyflash.prepare_mask` of one; not differentiable, nor is ``alibi_slopes``). ``deterministic`` goes to
    the backward. Returns out, or ``(out, lse, probs)`` with ``return_attn_probs`` (float32 attention matrix,
    for small problems; lse and probs carry no gradient). Dropout (``dropout_p``, ``rng_state``, ``generator``) as
    in :func:`cupyflash.flash_attn_func`: one state per call, drawn from cupyflash's generator (not PyTorch's) unless
    given, and the backward regenerates the same dropped pairs from it.
    """
    call = DenseCall(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                     return_attn_probs, mask, precision, rng_state, generator)
    return _apply(call, q, k, v, bias, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, *, precision=None, rng_state=None,
                           generator=None):
    """:func:`cupyflash.flash_attn_varlen_func` on torch tensors (packed (total, nheads, headdim) q, k, v; int32
    cu_seqlens), differentiable in q, k and v. ``return_attn_probs`` is not supported (NotImplementedError)."""
    call = PackedCall(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                      window_size, softcap, alibi_slopes, deterministic, return_attn_probs, precision, rng_state,
                      generator)
    return _apply(call, q, k, v, None, return_attn_probs)

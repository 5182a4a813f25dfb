"""JAX autodiff for cupyflash: ``flash_attn_func`` and ``flash_attn_varlen_func`` on JAX GPU arrays, differentiable
in q, k, v (and ``bias``) through ``jax.custom_vjp``.

Eager only: the kernels run on concrete arrays, exchanged with JAX through DLPack without copies. Under
``jax.jit`` (or ``vmap``, ``scan``, ...) the arguments are tracers and the call raises
``cupyflash._interop.TracerError`` while tracing, before any kernel: running inside a compiled JAX program needs an
XLA FFI custom call, which cupyflash does not have yet. Importing this module imports jax; ``import cupyflash``
alone never does.
"""
from __future__ import annotations

import functools

try:
    import jax
except ImportError as exc:
    raise ImportError("cupyflash.jax needs JAX (pip install jax[cuda12]); the rest of cupyflash works without it, "
                      "on CuPy arrays or any CUDA array") from exc

from . import _interop
from ._adapters import DenseCall, PackedCall
from ._interop import TracerError

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "TracerError"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(call, q, k, v, bias):
    return call.forward(q, k, v, bias)[0]


def _forward(call, q, k, v, bias):
    # symbolic_zeros: each array comes as CustomVJPPrimal(value, perturbed); dbias only if bias is differentiated
    q, k, v = (x.value for x in (q, k, v))
    want_dbias = bias is not None and bias.perturbed
    bias = None if bias is None else bias.value
    out, lse, _ = call.forward(q, k, v, bias)
    return out, (q, k, v, out, lse, bias, want_dbias)


def _backward(call, residuals, dout):
    q, k, v, out, lse, bias, want_dbias = residuals
    if isinstance(dout, jax.custom_derivatives.SymbolicZero):  # out does not reach the loss
        return None, None, None, None
    dq, dk, dv, dbias = call.backward(dout, q, k, v, out, lse, bias, bool(want_dbias))
    return dq, dk, dv, None if dbias is None else dbias.astype(bias.dtype)


_attention.defvjp(_forward, _backward, symbolic_zeros=True)


def _refuse_traced(**arrays):
    """Arguments held by the call object (not traced by custom_vjp) must be concrete too; say so clearly."""
    for name, x in arrays.items():
        if isinstance(x, jax.core.Tracer):
            raise TracerError(_interop.jit_message(name))


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, *, bias=None, mask=None, precision=None, rng_state=None,
                    generator=None):
    """:func:`cupyflash.flash_attn_func` on JAX GPU arrays, differentiable in q, k, v and ``bias``; returns out.

    Arguments as in :func:`cupyflash.torch.flash_attn_func` (no ``return_attn_probs``: call
    :func:`cupyflash.flash_attn_func` with JAX arrays for lse or probs, which returns JAX arrays but no gradient).
    ``bias``'s gradient is computed only when it is differentiated; ``mask`` and ``alibi_slopes`` are not.
    Eager only: raises TracerError under ``jax.jit``. Dropout draws its state from cupyflash's generator (not a
    JAX key) unless ``rng_state`` is given; the backward reuses it.
    """
    _refuse_traced(alibi_slopes=alibi_slopes, mask=mask)
    call = DenseCall(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, False,
                     mask, precision, rng_state, generator)
    return _attention(call, q, k, v, bias)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, *, precision=None, rng_state=None, generator=None):
    """:func:`cupyflash.flash_attn_varlen_func` on JAX GPU arrays, differentiable in q, k and v; returns out.
    Eager only, as flash_attn_func."""
    _refuse_traced(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, alibi_slopes=alibi_slopes)
    call = PackedCall(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                      window_size, softcap, alibi_slopes, deterministic, precision=precision, rng_state=rng_state,
                      generator=generator)
    return _attention(call, q, k, v, None)

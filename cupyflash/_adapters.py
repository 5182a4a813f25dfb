"""What the PyTorch and JAX adapters share: one attention call's arguments other than the differentiable arrays
(q, k, v, bias), and its forward and backward through the public functions, which take and return the caller's
arrays (cupyflash._interop)."""
from __future__ import annotations

from ._dropout import resolve
from ._mask import for_one_call
from ._validate import check_dropout


class _Dropout:
    """The call's dropout state, drawn once (at construction, as the forward would) so that the backward gets
    the same one: the keywords both public functions take."""

    def __init__(self, dropout_p, rng_state, generator):
        state = resolve(check_dropout(dropout_p), rng_state, generator)
        self.keywords = dict(dropout_p=dropout_p, rng_state=None if state is None else (state.seed, state.offset))


class DenseCall:
    """flash_attn_func's arguments but q, k, v and bias; mask and alibi_slopes are not differentiated."""

    def __init__(self, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                 alibi_slopes=None, deterministic=False, return_attn_probs=False, mask=None, precision=None,
                 rng_state=None, generator=None):
        # tuple(): a list would miss the plan cache, whose keys take tuples of ints
        self.variant = dict(softmax_scale=softmax_scale, causal=causal, window_size=tuple(window_size),
                            softcap=softcap, alibi_slopes=alibi_slopes, mask=for_one_call(mask), precision=precision,
                            **_Dropout(dropout_p, rng_state, generator).keywords)
        self.deterministic, self.probs = deterministic, return_attn_probs

    def forward(self, q, k, v, bias):
        """(out, lse, probs or None)."""
        from .forward import flash_attn_func

        results = flash_attn_func(q, k, v, return_lse=True, return_attn_probs=self.probs, bias=bias,
                                  **self.variant)
        return results if self.probs else results + (None,)

    def backward(self, dout, q, k, v, out, lse, bias, want_dbias: bool):
        """(dq, dk, dv, dbias or None)."""
        from .backward import flash_attn_backward

        grads = flash_attn_backward(dout, q, k, v, out, lse, deterministic=self.deterministic, bias=bias,
                                    return_dbias=want_dbias, **self.variant)
        return grads if want_dbias else grads + (None,)


class PackedCall:
    """flash_attn_varlen_func's arguments but q, k and v (no bias: packed batches take none)."""

    def __init__(self, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                 causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                 return_attn_probs=False, precision=None, rng_state=None, generator=None):
        self.lengths = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        self.variant = dict(softmax_scale=softmax_scale, causal=causal, window_size=tuple(window_size),
                            softcap=softcap, alibi_slopes=alibi_slopes, precision=precision,
                            **_Dropout(dropout_p, rng_state, generator).keywords)
        self.deterministic, self.probs = deterministic, return_attn_probs

    def forward(self, q, k, v, bias=None):
        from .varlen import flash_attn_varlen_func

        out, lse = flash_attn_varlen_func(q, k, v, *self.lengths, return_lse=True, return_attn_probs=self.probs,
                                          **self.variant)
        return out, lse, None

    def backward(self, dout, q, k, v, out, lse, bias=None, want_dbias=False):
        from .varlen import flash_attn_varlen_backward

        grads = flash_attn_varlen_backward(dout, q, k, v, out, lse, *self.lengths, deterministic=self.deterministic,
                                           **self.variant)
        return grads + (None,)

"""Variable-length batches in flash-attn's packed layout: forward, backward and VJP.

Sequence i of a call is rows cu_seqlens_q[i]:cu_seqlens_q[i + 1] of q and cu_seqlens_k[i]:cu_seqlens_k[i + 1] of
k and v; the kernels read the offsets on the GPU, one block row per sequence (cuda_src/coords.cuh PackedRows), so
work follows the real lengths. An offsets array is read back and checked on its first use; later calls trust
the kernels' own clamps and report (cupyflash/_offsets.py).
"""
from __future__ import annotations

from . import _dropout, _offsets, backward
from . import _interop
from ._device import device_limits
from ._launch import PlanCache
from ._types import Array, Grads, Vjp, Window
from ._validate import as_cuda_array, check_dropout, describe_varlen, spec_of
from .configs import TileConfig, check_config, select_config
from .forward import ForwardPlan, _call_key, _on_device

_PLANS = PlanCache()
_BACKWARD_PLANS = PlanCache()


def flash_attn_varlen_func(q: Array, k: Array, v: Array, cu_seqlens_q: Array, cu_seqlens_k: Array,
                           max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False, window_size: Window = (-1, -1),
                           softcap: float = 0.0, alibi_slopes: Array | None = None, deterministic: bool = False,
                           return_attn_probs: bool = False, *, return_lse: bool = False,
                           config: TileConfig | None = None, precision: str | None = None,
                           rng_state: tuple[int, int] | None = None, generator: _dropout.Generator | None = None
                           ) -> Array | tuple[Array, ...]:
    """Exact softmax attention over a batch of sequences of different lengths, packed without padding.

    flash-attn's signature and semantics. Each sequence is its own problem: causal and windows align to its own
    bottom-right corner (query i of a sequence lines up with key i + its seqlen_k - its seqlen_q).

    Args:
        q: (total_q, nheads, headdim) CUDA array, float16, bfloat16 or float32, the sequences' queries one after
            another.
        k, v: (total_k, nheads_k, headdim), same dtype and device; nheads a multiple of nheads_k.
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) on q's GPU: 0, then the running totals of the sequences'
            lengths (empty sequences allowed). Checked before launching: starting at 0, non-decreasing, ending at
            total_q (total_k), no length above max_seqlen_q (max_seqlen_k); the check reads them back to the host,
            which waits for the work queued before them on the stream.
        max_seqlen_q, max_seqlen_k: the longest lengths (ints); the grid covers max_seqlen_q queries per sequence.
        dropout_p, softmax_scale, causal, window_size, softcap, deterministic, precision, rng_state, generator: as
            in flash_attn_func (dropout numbers each sequence's pairs from its own first row and key, with the
            sequence's index as the batch index).
        alibi_slopes: float32 (nheads,) or (batch, nheads), one row per sequence.
        return_attn_probs: not supported for packed batches (NotImplementedError).
        return_lse: also return the log-sum-exp, float32 (nheads, total_q) as flash-attn lays it out.
        config: force a forward TileConfig.

    Returns:
        out, a new contiguous (total_q, nheads, headdim) array of q's dtype; ``(out, lse)`` with ``return_lse``.
        A sequence with no keys gets output 0 and lse -inf.
    """
    if type(q) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(flash_attn_varlen_func, locals())
    del deterministic
    if return_attn_probs:
        raise NotImplementedError("return_attn_probs is not supported by flash_attn_varlen_func; call "
                                  "flash_attn_func on one sequence at a time to get its attention matrix")
    plan, (q, k, v, cu_q, cu_k, alibi) = _lookup(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                 alibi_slopes, dropout_p, softmax_scale, causal, window_size,
                                                 softcap, config, precision)
    problem = plan.problem
    _offsets.check(cu_q, cu_k, problem)
    dropout = _dropout.resolve(problem.dropout_p, rng_state, generator)
    out, lse = _on_device(problem.device, plan.run, q[None], k[None], v[None], alibi, (cu_q, cu_k), None, None,
                          dropout)
    out = out[0]
    return (out, lse) if return_lse else out


def flash_attn_varlen_backward(dout: Array, q: Array, k: Array, v: Array, out: Array, lse: Array,
                               cu_seqlens_q: Array, cu_seqlens_k: Array, max_seqlen_q: int, max_seqlen_k: int, *,
                               softmax_scale: float | None = None, causal: bool = False,
                               window_size: Window = (-1, -1), softcap: float = 0.0,
                               alibi_slopes: Array | None = None, deterministic: bool = False,
                               dq: Array | None = None, dk: Array | None = None, dv: Array | None = None,
                               atomic_dq: bool | None = None, config: TileConfig | None = None,
                               dq_config: TileConfig | None = None, kv_splits: int | None = None,
                               precision: str | None = None, dropout_p: float = 0.0,
                               rng_state: tuple[int, int] | None = None) -> Grads:
    """Gradients of ``out = flash_attn_varlen_func(q, k, v, cu_seqlens_q, ...)`` for ``dout``.

    dout and out are (total_q, nheads, headdim) like q, lse (nheads, total_q) as the forward returns it; the
    offsets, max_seqlens and variant keywords exactly as given to the forward; the remaining keywords as in
    flash_attn_backward. Returns (dq, dk, dv) in the packed layouts of q, k, v.
    """
    if type(dout) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(flash_attn_varlen_backward, locals())
    names = ("dout", "q", "k", "v", "out", "lse", "cu_seqlens_q", "cu_seqlens_k")
    arrays = (dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    given = {"dq": dq, "dk": dk, "dv": dv}
    key = _call_key(arrays, (dq, dk, dv, alibi_slopes), max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                    window_size, softcap, deterministic, atomic_dq, config, dq_config, kv_splits, precision,
                    dropout_p)
    plan = _BACKWARD_PLANS.get(key)
    if plan is None:
        arrays = tuple(as_cuda_array(x, n) for x, n in zip(arrays, names))
        alibi_slopes = None if alibi_slopes is None else as_cuda_array(alibi_slopes, "alibi_slopes")
        given = {n: None if g is None else as_cuda_array(g, n) for n, g in given.items()}
        dout, q, k, v, out, lse, cu_q, cu_k = arrays
        problem = describe_varlen(*(spec_of(x) for x in (q, k, v, cu_q, cu_k)), max_seqlen_q, max_seqlen_k,
                                  softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                  softcap=softcap, alibi_slopes=None if alibi_slopes is None else spec_of(alibi_slopes),
                                  precision=precision, dropout_p=dropout_p)
        specs = tuple(spec_of(x[None]) for x in (q, k, v, dout, out))
        grad_specs = {n: None if g is None else spec_of(g[None]) for n, g in given.items()}
        plan = backward.make_plan(problem, specs, spec_of(lse), grad_specs, deterministic=deterministic,
                                  atomic_dq=atomic_dq, config=config, dq_config=dq_config, kv_splits=kv_splits)
        _BACKWARD_PLANS.put(key, plan)
    dout, q, k, v, out, lse, cu_q, cu_k = arrays
    _offsets.check(cu_q, cu_k, plan.problem)
    dropout = _dropout.resolve(plan.problem.dropout_p, rng_state, backward=True)
    grads = _on_device(plan.problem.device, plan.run, tuple(x[None] for x in (q, k, v, dout, out)) + (lse,),
                       alibi_slopes, {n: None if g is None else g[None] for n, g in given.items()}, (cu_q, cu_k),
                       None, None, dropout)
    return tuple(g[0] if given[n] is None else given[n] for n, g in zip(("dq", "dk", "dv"), grads))


def flash_attn_varlen_vjp(q: Array, k: Array, v: Array, cu_seqlens_q: Array, cu_seqlens_k: Array,
                          max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                          softmax_scale: float | None = None, causal: bool = False, window_size: Window = (-1, -1),
                          softcap: float = 0.0, alibi_slopes: Array | None = None, deterministic: bool = False, *,
                          precision: str | None = None, rng_state: tuple[int, int] | None = None,
                          generator: _dropout.Generator | None = None) -> tuple[Array, Vjp]:
    """The packed forward plus a function that maps an upstream gradient to (dq, dk, dv); see flash_attn_vjp."""
    if type(q) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(flash_attn_varlen_vjp, locals())
    dropout = _dropout.resolve(check_dropout(dropout_p), rng_state, generator)
    variant = dict(softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                   alibi_slopes=alibi_slopes, precision=precision, dropout_p=dropout_p,
                   rng_state=None if dropout is None else (dropout.seed, dropout.offset))
    lengths = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    out, lse = flash_attn_varlen_func(q, k, v, *lengths, return_lse=True, **variant)

    def vjp(dout):
        return flash_attn_varlen_backward(dout, q, k, v, out, lse, *lengths, deterministic=deterministic, **variant)

    return out, vjp


def _lookup(q, k, v, cu_q, cu_k, max_q, max_k, alibi_slopes, *scalars):
    arrays = (q, k, v, cu_q, cu_k)
    key = _call_key(arrays, (alibi_slopes,), max_q, max_k, *scalars)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan, arrays + (alibi_slopes,)
    return _plan(arrays, alibi_slopes, key, max_q, max_k, *scalars)


def _plan(arrays, alibi_slopes, key, max_q, max_k, dropout_p, softmax_scale, causal, window_size, softcap,
          config, precision):
    """Validate the call (raising before any launch) and prepare its plan; cached under ``key``."""
    names = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k")
    arrays = tuple(as_cuda_array(x, n) for x, n in zip(arrays, names))
    alibi = None if alibi_slopes is None else as_cuda_array(alibi_slopes, "alibi_slopes")
    specs = [spec_of(x) for x in arrays]
    problem = describe_varlen(*specs, max_q, max_k, softmax_scale=softmax_scale, causal=causal,
                              window_size=window_size, softcap=softcap,
                              alibi_slopes=None if alibi is None else spec_of(alibi), dropout_p=dropout_p,
                              precision=precision)
    limits = device_limits(problem.device)
    if config is None:
        config = select_config("fwd", limits, problem.head_dim, problem.causal, problem.variant,
                               seqlen_q=problem.seqlen_q)
    else:
        check_config("fwd", config, limits, problem.head_dim, problem.variant)
    q4, k4, v4 = (spec_of(x[None]) for x in arrays[:3])
    plan = ForwardPlan(problem, config, q4, k4, v4)
    _PLANS.put(key, plan)
    return plan, arrays + (alibi,)

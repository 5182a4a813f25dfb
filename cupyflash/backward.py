"""The backward pass: dQ, dK, dV from the forward's output and log-sum-exp, and a functional VJP."""
from __future__ import annotations

import math

from . import _kernels, _launch
from ._device import device_limits
from ._launch import PlanCache, Staging, array_key, empty, scalar_key, static_params
from ._validate import (as_cuda_array, check_backward_inputs, check_grad_output, describe, needs_aligned_copy,
                        spec_of)
from .configs import check_config, family_for, kernel_head_dim, select_config, use_atomic_dq
from .forward import _on_device, flash_attn_func

_PLANS = PlanCache()
_GRADS = ("dq", "dk", "dv")


class BackwardPlan:
    """Everything a backward call needs that depends only on its cache key."""

    def __init__(self, problem, config, dq_config, atomic_dq, specs, grad_specs):
        self.problem = p = problem
        self.atomic_dq = atomic_dq
        pd = p.padded_head_dim
        q_spec, k_spec, v_spec, dout_spec, out_spec = specs
        self.staging = tuple(Staging(s, pd) for s in specs)  # q, k, v, dout, out
        itemsize = q_spec.itemsize
        self.grad_shapes = {"dq": q_spec.shape, "dk": k_spec.shape, "dv": v_spec.shape}
        # Gradients go straight into the caller's buffers when the kernels can write them; else into fresh ones.
        self.direct = {name: spec is not None and pd == p.head_dim and not needs_aligned_copy(spec)
                       for name, spec in grad_specs.items()}
        self.params = static_params(p)
        for name, staging in zip(("q", "k", "v", "do", "o"), self.staging):
            self.params.set_strides(name, staging.kernel_strides, itemsize)
        for name, spec in grad_specs.items():
            shape = self.grad_shapes[name][:3] + (pd,)
            strides = spec.strides if self.direct[name] else _launch.contiguous_strides(shape, itemsize)
            self.params.set_strides(name, strides, itemsize)
        self.launches = p.batch * p.nheads * p.seqlen_q * p.seqlen_k > 0
        if not self.launches:
            return
        # Scratch, one allocation: lse2 and delta rows (row_pitch floats per (batch, head)), then the fp32 dQ
        # accumulator (atomic dQ only).
        self.rows_floats = p.batch * p.nheads * _launch.row_pitch(p)
        self.accum_floats = p.batch * p.seqlen_q * p.nheads * pd if atomic_dq else 0
        limits = device_limits(p.device)
        family = family_for(limits, p.variant)
        kd = kernel_head_dim(p.head_dim)
        fn = lambda kind, cfg=None, atomic=False: _kernels.get_function(  # noqa: E731
            family, kind, cfg, kd, p.variant, p.device, atomic)
        self.pre = fn("bwd_preprocess")
        self.rows_grid = (math.ceil(p.batch * p.nheads * p.seqlen_q / 4),)  # one warp per query row
        self.main = fn("bwd", config, atomic_dq)
        self.main_grid = (math.ceil(p.seqlen_k / config.block_n), p.nheads_k, p.batch)
        self.main_block = (config.warps * 32,)
        self.main_smem = family.smem_bytes("bwd", config, kd)
        if atomic_dq:
            self.convert = fn("bwd_convert_dq")
        else:
            self.dq_fn = fn("bwd_dq", dq_config)
            self.dq_grid = _launch.query_grid(p, dq_config.block_m)
            self.dq_block = (dq_config.warps * 32,)
            self.dq_smem = family.smem_bytes("bwd_dq", dq_config, kd)

    def run(self, arrays, alibi_slopes, given):
        import cupy

        q, k, v, dout, out, lse = arrays
        q, k, v, dout, out = (s.stage(x) for s, x in zip(self.staging, (q, k, v, dout, out)))
        pd = self.problem.padded_head_dim
        bufs = {name: given[name] if self.direct[name] else
                empty(self.grad_shapes[name][:3] + (pd,), q.dtype) for name in _GRADS}
        if not self.launches:  # no query or no key: every gradient that exists is zero
            for buf in bufs.values():
                buf.fill(0)
        else:
            lse = lse if lse.flags.c_contiguous else cupy.ascontiguousarray(lse)
            scratch = cupy.cuda.alloc(4 * (2 * self.rows_floats + self.accum_floats))
            lse2 = scratch.ptr
            delta = lse2 + 4 * self.rows_floats
            accum = delta + 4 * self.rows_floats if self.atomic_dq else 0
            params = self.params
            with params.lock:
                params.set_pointers((q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, lse.data.ptr, dout.data.ptr,
                                     lse2, delta, accum, bufs["dq"].data.ptr, bufs["dk"].data.ptr,
                                     bufs["dv"].data.ptr, _launch.ptr(alibi_slopes)))
                self._launch(params.argument)
            del scratch  # back to the pool, stream-ordered: later work on this stream cannot overtake the kernels
        results = []
        for name in _GRADS:
            buf, user = bufs[name], given[name]
            if buf.shape[3] != self.grad_shapes[name][3]:
                buf = buf[..., :self.grad_shapes[name][3]]
            if user is None:
                results.append(buf if buf.flags.c_contiguous else cupy.ascontiguousarray(buf))
            else:
                if user is not buf:
                    user[...] = buf
                results.append(user)
        return tuple(results)

    def _launch(self, args):
        import cupy

        self.pre(self.rows_grid, (128,), (args,))
        if self.atomic_dq:
            self.main(self.main_grid, self.main_block, (args,), shared_mem=self.main_smem)
            self.convert(self.rows_grid, (128,), (args,))
            return
        # The dK/dV and dQ kernels write disjoint outputs: the dQ kernel runs on a side stream so that each one's
        # last, partly filled wave overlaps the other's work. Forked from and joined back into the caller's stream.
        caller = cupy.cuda.get_current_stream()
        side = _side_stream(self.problem.device)
        side.wait_event(caller.record())
        with side:
            self.dq_fn(self.dq_grid, self.dq_block, (args,), shared_mem=self.dq_smem)
            joined = side.record()
        self.main(self.main_grid, self.main_block, (args,), shared_mem=self.main_smem)
        caller.wait_event(joined)


_side_streams = {}


def _side_stream(device_id):
    import cupy

    if device_id not in _side_streams:
        _side_streams[device_id] = cupy.cuda.Stream(non_blocking=True)
    return _side_streams[device_id]


def _plan(arrays, alibi_slopes, given, key, *, softmax_scale, causal, window_size, softcap, deterministic,
          atomic_dq, config, dq_config):
    """Validate the call (raising before any launch) and prepare its plan; cached under ``key``."""
    names = ("dout", "q", "k", "v", "out", "lse")
    dout, q, k, v, out, lse = (as_cuda_array(x, n) for x, n in zip(arrays, names))
    alibi = None if alibi_slopes is None else as_cuda_array(alibi_slopes, "alibi_slopes")
    given = {n: None if g is None else as_cuda_array(g, n) for n, g in given.items()}
    q_spec, k_spec, v_spec = (spec_of(x) for x in (q, k, v))
    problem = describe(q_spec, k_spec, v_spec, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                       softcap=softcap, alibi_slopes=None if alibi is None else spec_of(alibi))
    check_backward_inputs(problem, q_spec, spec_of(dout), spec_of(out), spec_of(lse))
    for name, like in zip(_GRADS, (q_spec, k_spec, v_spec)):
        if given[name] is not None:
            check_grad_output(name, spec_of(given[name]), like)
    if atomic_dq and deterministic:
        raise ValueError("atomic_dq=True adds dQ in an order that varies between runs; it cannot be deterministic")
    limits = device_limits(problem.device)
    v_ = problem.variant
    if config is None:
        config = select_config("bwd", limits, problem.head_dim, problem.causal, v_)
    else:
        check_config("bwd", config, limits, problem.head_dim, v_)
    if atomic_dq is None:
        atomic_dq = not deterministic and use_atomic_dq(limits, problem.head_dim, problem.seqlen_q,
                                                        problem.seqlen_k, problem.variant.mask != "none")
    if not atomic_dq:
        if dq_config is None:
            dq_config = select_config("bwd_dq", limits, problem.head_dim, problem.causal, v_)
        else:
            check_config("bwd_dq", dq_config, limits, problem.head_dim, v_)
    specs = (q_spec, k_spec, v_spec, spec_of(dout), spec_of(out))
    grad_specs = {n: None if g is None else spec_of(g) for n, g in given.items()}
    plan = BackwardPlan(problem, config, dq_config, bool(atomic_dq), specs, grad_specs)
    _PLANS.put(key, plan)
    return plan, (q, k, v, dout, out, lse), alibi, given


def flash_attn_backward(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, dq=None, dk=None, dv=None,
                        atomic_dq=None, config=None, dq_config=None):
    """Gradients of ``out = flash_attn_func(q, k, v, ...)`` for the upstream gradient ``dout``.

    Args:
        dout: (batch, seqlen_q, nheads, headdim), q's dtype; any strides with the head dim contiguous.
        q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes: exactly as given to the forward.
        out, lse: the forward's results (``flash_attn_func(..., return_lse=True)``).
        deterministic: guarantee bitwise-identical gradients from run to run. dQ is then computed by a second
            kernel that walks the keys in a fixed order (recomputing S and dP). Without it the dispatcher usually
            adds dQ with fp32 atomics inside the dK/dV kernel instead, whose order varies; the measured cost of
            determinism is in docs/performance.md. dK and dV are always deterministic, also with grouped-query
            attention (one block sums a K/V head's query heads in a fixed order).
        atomic_dq: force the dQ strategy (True: atomics, not deterministic; False: separate kernel); default:
            ``configs.use_atomic_dq`` (atomics for large problems at most head dims).
        dq, dk, dv: optional preallocated outputs (shape and dtype of q, k, v; any strides with the head dim
            contiguous), written in place and returned.
        config, dq_config: force tile configurations (TileConfig entries of the 'bwd' and 'bwd_dq' tables).

    Returns:
        (dq, dk, dv) in the dtypes and shapes of q, k, v (dk, dv with nheads_k heads: summed over each group's
        query heads); new contiguous arrays unless given.
    """
    arrays = (q, k, v, dout, out, lse)
    given = {"dq": dq, "dk": dk, "dv": dv}
    key = None
    keys = tuple(map(array_key, arrays))
    if None not in keys:
        grad_keys = tuple(None if g is None else array_key(g) for g in (dq, dk, dv))
        alibi = None if alibi_slopes is None else array_key(alibi_slopes)
        rest = scalar_key(softmax_scale, causal, window_size, softcap, deterministic, atomic_dq, config, dq_config)
        if rest is not None and (alibi_slopes is None) == (alibi is None) and all(
                (g is None) == (gk is None) for g, gk in zip((dq, dk, dv), grad_keys)):
            key = (keys, grad_keys, alibi, rest)
    plan = _PLANS.get(key)
    if plan is None:
        plan, arrays, alibi_slopes, given = _plan(
            (dout, q, k, v, out, lse), alibi_slopes, given, key, softmax_scale=softmax_scale, causal=causal,
            window_size=window_size, softcap=softcap, deterministic=deterministic, atomic_dq=atomic_dq,
            config=config, dq_config=dq_config)
    return _on_device(plan.problem.device, plan.run, arrays, alibi_slopes, given)


def flash_attn_vjp(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                   alibi_slopes=None, deterministic=False):
    """Forward pass plus a function that maps an upstream gradient to (dq, dk, dv).

    ``out, vjp = flash_attn_vjp(q, k, v, ...); dq, dk, dv = vjp(dout)``, with flash_attn_func's arguments. The
    closure holds q, k, v, out and the log-sum-exp (no score matrix); it may be called any number of times.
    """
    variant = dict(softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                   alibi_slopes=alibi_slopes)
    out, lse = flash_attn_func(q, k, v, dropout_p, return_lse=True, **variant)

    def vjp(dout):
        return flash_attn_backward(dout, q, k, v, out, lse, deterministic=deterministic, **variant)

    return out, vjp

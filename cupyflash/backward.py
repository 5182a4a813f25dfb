"""The backward pass: dQ, dK, dV (and dbias) from the forward's output and log-sum-exp, and a functional VJP."""
from __future__ import annotations

import dataclasses
import math

from . import _dropout, _kernels, _launch, configs
from . import _interop
from ._bias import readable
from ._mask import PreparedMask, TileSummary, for_one_call, unwrap, with_block_mask
from ._types import Array, Grads, Vjp, Window
from ._device import device_limits
from ._launch import Launch, PlanCache, Staging, current_stream_ptr, empty, static_params
from ._validate import (as_cuda_array, check_backward_inputs, check_dropout, check_grad_output, describe,
                        needs_aligned_copy, spec_of)
from .configs import FAMILIES_BY_NAME, check_config, family_for, kernel_head_dim, select_config, use_atomic_dq
from .forward import _call_key, _on_device, flash_attn_func

_PLANS = PlanCache()
_GRADS = ("dq", "dk", "dv")


def operand_rounding(rounding, atomic_dq: bool) -> tuple:
    """The rounding kernel that stages each of q, k, v and dout (None: staged as any input). The dK/dV kernel rounds
    its K and V tiles itself, once a block (flash_bwd.cu): with atomic dQ no other kernel reads them, so only Q and
    dO, which it reloads every step, are staged rounded; the dQ kernel reloads K and V every step."""
    return tuple(None if atomic_dq and name in ("k", "v") else rounding for name in ("q", "k", "v", "dout"))


class BackwardPlan:
    """Everything a backward call needs that depends only on its cache key."""

    def __init__(self, problem, config, dq_config, atomic_dq, kv_splits, specs, lse_spec, grad_specs,
                 deterministic=False):
        self.problem = p = problem
        self.atomic_dq = atomic_dq
        pd = p.padded_head_dim
        q_spec, k_spec, v_spec, dout_spec, out_spec = specs
        self.copy_rows = _launch.row_copy_kernel(p)  # head dims that are not a multiple of 8
        # q, k, v, dout: the products' operands (float32 at "tf32": rounded, mma_tf32.cuh Mma<tf32>); out
        rounding = _launch.tf32_rounding_kernel(p, family_for(device_limits(p.device), p.variant))
        self.staging = (tuple(_launch.operand_staging(s, pd, self.copy_rows, r)
                              for s, r in zip(specs[:4], operand_rounding(rounding, atomic_dq)))
                        + (Staging(out_spec, pd, self.copy_rows),))
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
        self.packed = p.variant.rows == "packed"
        if self.packed:  # blockIdx.z is the sequence; its rows start at cu_seqlens, not at a batch stride
            self.params.set(**{f"{name}_str_batch": 0 for name in ("q", "k", "v", "do", "o", "dq", "dk", "dv")})
        self.copies_back = any(spec is not None and not self.direct[name] for name, spec in grad_specs.items())
        self.launches = p.batch * p.nheads * p.seqlen_q * p.seqlen_k > 0
        self.dbias = _DBiasLayout(p, config, self.launches, deterministic) if p.variant.dbias else None
        if self.dbias is not None:
            self.params.set(dbias_sums=self.dbias.sums)
            self.params.set_strides("dbias", self.dbias.strides, 4)
        self.any_staging = any(s.copy for s in self.staging)
        self.trimmed = pd != p.head_dim  # kernel buffers wider than the caller's head dim: copied out at its width
        self.mask_tiles = ()
        if not self.launches:
            return
        self.lse_contiguous = lse_spec.strides == _launch.contiguous_strides(lse_spec.shape, 4)
        # Scratch, one allocation: lse2 and delta rows (row_pitch floats per (batch, head)), then the fp32 dQ
        # accumulator (atomic dQ only), then the fp32 partial dK and dV of each group split (kv_splits > 1 only).
        self.rows_floats = p.batch * p.nheads * _launch.row_pitch(p)
        query_rows = p.total_q if self.packed else p.batch * p.seqlen_q
        # float32 dQ adds into its own buffer where that has the accumulator's layout (contiguous rows of nheads x
        # padded head dim; the preprocess kernel zeroes it): no accumulator and no conversion pass
        dq_spec = grad_specs.get("dq")
        self.accum_in_dq = atomic_dq and p.variant.dtype == "float32" and (
            not self.direct["dq"] or dq_spec.strides == _launch.contiguous_strides(dq_spec.shape, 4))
        self.accum_floats = query_rows * p.nheads * pd if atomic_dq and not self.accum_in_dq else 0
        self.kv_splits = kv_splits
        self.partial_floats = 2 * kv_splits * p.batch * p.seqlen_k * p.nheads_k * pd if kv_splits > 1 else 0
        self.params.set(kv_splits=kv_splits, heads_per_split=p.heads_per_kv // kv_splits)
        family = family_for(device_limits(p.device), p.variant)  # the helpers' (every kind's)
        kd = kernel_head_dim(p.head_dim)

        def launch(kind, grid, cfg=None, atomic=False):
            fam = family if cfg is None else FAMILIES_BY_NAME[cfg.family]  # a tile's own (wgmma_tf32's dK/dV)
            fn = _kernels.get_function(fam, kind, cfg, kd, p.variant, p.device, atomic)
            threads = 128 if cfg is None else cfg.warps * 32
            smem = 0 if cfg is None else fam.smem_bytes(kind, cfg, kd, p.variant)
            return Launch(fn, p.device, grid, threads, smem, self.params)

        if self.dbias is not None and self.dbias.summed:
            self.dbias.kernel = _kernels.get_function(family, "dbias_sum", None, 0, p.variant, p.device)
            self.dbias.max_blocks = 8 * device_limits(p.device).sm_count
        rows_grid = (math.ceil(p.batch * p.nheads * p.seqlen_q / 4),)  # one warp per query row
        self.pre = launch("bwd_preprocess", rows_grid)
        self.main = launch("bwd", _launch.key_grid(p, config.block_n, kv_splits), config, atomic_dq)
        # a boolean mask: tile summaries by key tiles (dK/dV kernel) and by query tiles (dQ kernel)
        if p.variant.bool_mask:
            self.mask_tiles = (TileSummary.for_kernel(p, config, True, self.params),)
            if not atomic_dq:
                self.mask_tiles += (TileSummary.for_kernel(p, dq_config, False, self.params),)
        if kv_splits > 1:  # one warp per (batch, key, K/V head) row
            self.reduce = launch("bwd_reduce_dkdv", (math.ceil(p.batch * p.seqlen_k * p.nheads_k / 4),))
        if atomic_dq:
            if not self.accum_in_dq:
                self.convert = launch("bwd_convert_dq", rows_grid)
        else:
            self.dq = launch("bwd_dq", _launch.query_grid(p, dq_config.block_m), dq_config)
            self.fork = _StreamFork(p.device)

    def run(self, arrays, alibi_slopes, given, cu_seqlens=(None, None), bias=None, mask=None, dropout=None):
        import cupy

        q, k, v, dout, out, lse = arrays
        tiles = [None, None]  # summaries by key tiles (dK/dV kernel), by query tiles (dQ kernel)
        if self.mask_tiles:  # the boolean mask, raw or prepared (a raw one's padded copy made once)
            prepared = mask if isinstance(mask, PreparedMask) else PreparedMask(mask, find_blocks=False)
            for i, summary in enumerate(self.mask_tiles):
                mask, tiles[i] = summary.read(prepared)
        if bias is not None:
            bias = readable(self.problem.bias, bias)
        if self.any_staging:
            q, k, v, dout, out = (s.stage(x) for s, x in zip(self.staging, (q, k, v, dout, out)))
        pd = self.problem.padded_head_dim
        bufs = [given[name] if self.direct[name] else empty(self.grad_shapes[name][:3] + (pd,), q.dtype)
                for name in _GRADS]
        dbias = None if self.dbias is None else self.dbias.partial()
        if not self.launches:  # no query or no key: every gradient that exists is zero
            for buf in bufs:
                buf.fill(0)
        else:
            if not self.lse_contiguous:
                lse = cupy.ascontiguousarray(lse)
            scratch = cupy.cuda.alloc(4 * (2 * self.rows_floats + self.accum_floats + self.partial_floats))
            lse2 = scratch.ptr
            delta = lse2 + 4 * self.rows_floats
            accum = delta + 4 * self.rows_floats
            partial = accum + 4 * self.accum_floats
            dq, dk, dv = bufs
            with self.params.lock:
                self.params.set_per_call((q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, lse.data.ptr,
                                          dout.data.ptr, lse2, delta, self._accum(accum, dq), dq.data.ptr,
                                          dk.data.ptr, dv.data.ptr, _launch.ptr(alibi_slopes),
                                          partial if self.kv_splits > 1 else 0, *map(_launch.ptr, cu_seqlens),
                                          _launch.ptr(bias), _launch.ptr(dbias), _launch.ptr(tiles[1]),
                                          _launch.ptr(tiles[0]), _launch.ptr(mask), 0, 0,
                                          *_launch.dropout_fields(dropout)))
                self._launch(current_stream_ptr())
            del scratch  # back to the pool, stream-ordered: later work on this stream cannot overtake the kernels
        extra = () if dbias is None else (self.dbias.finish(dbias),)
        if not self.trimmed and not self.copies_back:
            return tuple(bufs) + extra
        results = []
        for name, buf in zip(_GRADS, bufs):
            user = given[name]
            if self.trimmed:  # padded kernel buffers: the real columns into the caller's buffer or a fresh one
                dst = cupy.empty(self.grad_shapes[name], buf.dtype) if user is None else user
                results.append(_launch.copy_rows(self.copy_rows, buf, dst))
            elif user is None or user is buf:
                results.append(buf)
            else:
                user[...] = buf
                results.append(user)
        return tuple(results) + extra

    def _accum(self, scratch: int, dq) -> int:
        """The fp32 dQ accumulator's address: dq itself, the scratch's, or 0 (no atomic dQ)."""
        if not self.atomic_dq:
            return 0
        return dq.data.ptr if self.accum_in_dq else scratch

    def _launch(self, stream):
        self.pre(stream)
        if self.atomic_dq:
            self._dkdv(stream)
            if not self.accum_in_dq:
                self.convert(stream)
            return
        # The dK/dV and dQ kernels write disjoint outputs: the dQ kernel runs on a side stream so that each one's
        # last, partly filled wave overlaps the other's work. Forked from and joined back into the caller's stream.
        side = self.fork.start(stream)
        self.dq(side)
        self._dkdv(stream)
        self.fork.join(stream)

    def _dkdv(self, stream):
        self.main(stream)
        if self.kv_splits > 1:
            self.reduce(stream)


class _DBiasLayout:
    """Where the dK/dV kernel writes the bias's gradient (cuda_src/bias.cuh BiasGrad) and how it becomes dbias: an
    fp32 partial (batch, nheads, rows, columns), zero where no block writes (tiles a band or boolean mask skips;
    without one every element is written, so it is not zero-filled first); rows are queries, or with the bias
    broadcast over queries one per D_SPLIT warp column of sums; columns are keys, or with the bias broadcast over
    keys one per group of a warp's keys. Summing it over the bias's broadcast dims in a fixed order
    (cuda_src/dbias_sum.cu) gives dbias in the bias's own shape, float32; deterministic.

    A bias of full queries and keys broadcast over batches or heads, without determinism asked, skips the partial
    (batch x heads x S^2 floats, written once and read once): the kernel adds dS into dbias itself with atomics
    (``atomic``; zero-filled first, stride 0 along the broadcast batches and heads). H100, bf16, 16k tokens, pair
    bias (1, H, S, S), seqlens 1024-8192 (python -m cupyflash.bench --bias, 2026-11-26, backward with dbias,
    atomics vs partial, dK/dV blocks batch-first): head dim 64 2.84 vs 3.49 ms at 1024, 24.6 vs 29.4 at 8192;
    head dim 128 2.44 vs 2.72 at 1024, 16.3 vs 21.2 at 8192 (faster at every seqlen of both)."""

    kernel = None  # flash_dbias_sum_kernel where some dim is summed
    max_blocks = 132 * 8  # its grid: enough resident blocks to fill a GPU (set from the device's SM count)

    def __init__(self, problem, config, launches: bool, deterministic: bool = True):
        p = problem
        given = p.bias.given
        full = (p.batch, p.nheads, p.seqlen_q, p.seqlen_k)
        four = (1,) * (4 - len(given)) + tuple(given)
        sum_q, sum_k = four[2] == 1 < full[2], four[3] == 1 < full[3]
        key_groups = math.ceil(p.seqlen_k / config.block_n) * (config.warps // config.d_split)
        rows, cols = (config.d_split if sum_q else p.seqlen_q), (key_groups if sum_k else p.seqlen_k)
        self.partial_shape = (p.batch, p.nheads, rows, cols)
        self.sums = int(sum_q) | 2 * int(sum_k)
        self.strides = (4 * p.nheads * rows * cols, 4 * cols, 4 * rows * cols)  # (batch, row, head) bytes
        self.summed = sum(1 << a for a, (g, n) in enumerate(zip(four, full)) if g == 1 and n > 1)
        self.shape = tuple(given)
        self.launches = launches
        self.zero_fill = not launches or p.variant.mask != "none" or p.variant.bool_mask
        self.atomic = not deterministic and self.sums == 0 and self.summed & 3 != 0
        if self.atomic:
            b, h, sq, sk = four
            self.partial_shape, self.sums, self.summed, self.zero_fill = four, 4, 0, True
            self.strides = (4 * h * sq * sk if b > 1 else 0, 4 * sk, 4 * sq * sk if h > 1 else 0)

    def partial(self):
        import cupy

        return (cupy.zeros if self.zero_fill else cupy.empty)(self.partial_shape, cupy.float32)

    def finish(self, partial):
        import cupy
        import numpy as np

        if not self.launches:  # an empty problem (no query or no key): the gradient is 0 in the bias's shape
            return cupy.zeros(self.shape, cupy.float32)
        if not self.summed:
            return partial.reshape(self.shape)
        dbias = cupy.empty(self.shape, cupy.float32)
        if dbias.size:  # grid-stride blocks over dbias rows: a block per row, or a thread where columns are summed
            out_rows = math.prod(n for d, n in enumerate(self.partial_shape[:3]) if not self.summed >> d & 1)
            blocks = min(-(-out_rows // 256) if self.summed & 8 else out_rows, self.max_blocks)
            self.kernel((blocks,), (256,), (partial, dbias, *map(np.int32, self.partial_shape),
                                            np.int32(self.summed)))
        return dbias


class _StreamFork:
    """A side stream of one device and two reusable events: start(caller) orders the side stream after the
    caller's work so far; join(caller) orders the caller's later work after the side stream's. Callers hold the
    plan's params lock from start to join, so the events are never shared by two calls in flight on the host."""

    _side_streams = {}

    def __init__(self, device_id):
        import cupy
        from cupy_backends.cuda.api import runtime

        with cupy.cuda.Device(device_id):
            if device_id not in self._side_streams:
                self._side_streams[device_id] = cupy.cuda.Stream(non_blocking=True)
            self.side = self._side_streams[device_id]
            self._events = (cupy.cuda.Event(disable_timing=True), cupy.cuda.Event(disable_timing=True))
        self._forked, self._joined = (e.ptr for e in self._events)
        self._record, self._wait = runtime.eventRecord, runtime.streamWaitEvent

    def start(self, caller: int) -> int:
        self._record(self._forked, caller)
        self._wait(self.side.ptr, self._forked, 0)
        return self.side.ptr

    def join(self, caller: int) -> None:
        self._record(self._joined, self.side.ptr)
        self._wait(caller, self._joined, 0)


def _plan(arrays, alibi_slopes, bias, mask, given, key, *, softmax_scale, causal, window_size, softcap,
          deterministic, atomic_dq, config, dq_config, kv_splits, return_dbias=False, mask_blocks=None,
          precision=None, dropout_p=0.0):
    """Validate the call (raising before any launch) and prepare its plan; cached under ``key``."""
    names = ("dout", "q", "k", "v", "out", "lse")
    dout, q, k, v, out, lse = (as_cuda_array(x, n) for x, n in zip(arrays, names))
    alibi = None if alibi_slopes is None else as_cuda_array(alibi_slopes, "alibi_slopes")
    bias = None if bias is None else as_cuda_array(bias, "bias")
    mask = None if mask is None else as_cuda_array(mask, "mask")
    given = {n: None if g is None else as_cuda_array(g, n) for n, g in given.items()}
    q_spec, k_spec, v_spec = (spec_of(x) for x in (q, k, v))
    problem = describe(q_spec, k_spec, v_spec, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                       softcap=softcap, alibi_slopes=None if alibi is None else spec_of(alibi),
                       bias=None if bias is None else spec_of(bias), mask=None if mask is None else spec_of(mask),
                       precision=precision, dropout_p=dropout_p)
    if return_dbias:
        if bias is None:
            raise ValueError("return_dbias=True needs the bias whose gradient it returns (bias=None was given)")
        problem = dataclasses.replace(problem, variant=dataclasses.replace(problem.variant, dbias=True))
    specs = (q_spec, k_spec, v_spec, spec_of(dout), spec_of(out))
    grad_specs = {n: None if g is None else spec_of(g) for n, g in given.items()}
    plan = make_plan(problem, specs, spec_of(lse), grad_specs, deterministic=deterministic, atomic_dq=atomic_dq,
                     config=config, dq_config=dq_config, kv_splits=kv_splits, mask_blocks=mask_blocks)
    _PLANS.put(key, plan)
    return plan, (q, k, v, dout, out, lse), alibi, bias, mask, given


def make_plan(problem, specs, lse_spec, grad_specs, *, deterministic, atomic_dq, config, dq_config, kv_splits,
              mask_blocks=None):
    """The checks that follow the Problem (inputs against it, strategy and tile arguments) and the plan; specs are
    (q, k, v, dout, out) as the kernels index them (packed rows: (1, total, heads, dim) views). ``mask_blocks``:
    a prepared mask's uniform blocks, which may let the kernels skip reading it (forward._plan)."""
    q_spec, k_spec, v_spec, dout_spec, out_spec = specs
    check_backward_inputs(problem, q_spec, dout_spec, out_spec, lse_spec)
    for name, like in zip(_GRADS, (q_spec, k_spec, v_spec)):
        if grad_specs[name] is not None:
            check_grad_output(name, grad_specs[name], like)
    if atomic_dq and deterministic:
        raise ValueError("atomic_dq=True adds dQ in an order that varies between runs; it cannot be deterministic")
    limits = device_limits(problem.device)
    if atomic_dq is None:
        atomic_dq = not deterministic and use_atomic_dq(limits, problem.head_dim, problem.seqlen_q,
                                                        problem.seqlen_k, problem.variant.mask != "none",
                                                        problem.variant)

    def pick(variant):  # (dK/dV config, dQ config or None)
        picked = []
        for kind, forced in (("bwd", config), ("bwd_dq", dq_config)):
            if kind == "bwd_dq" and atomic_dq:
                picked.append(None)
            elif forced is None:
                picked.append(select_config(kind, limits, problem.head_dim, problem.causal, variant))
            else:
                check_config(kind, forced, limits, problem.head_dim, variant)
                picked.append(forced)
        return tuple(picked)

    # a block-sparse mask whose blocks hold whole tiles: only its summary is read
    problem, chosen = with_block_mask(problem, mask_blocks, pick)
    config, dq_config = chosen or pick(problem.variant)
    blocks = math.ceil(problem.seqlen_k / config.block_n) * problem.nheads_k * problem.batch
    if kv_splits is None:
        kv_splits = configs.kv_splits(limits, blocks, problem.heads_per_kv,
                                      math.ceil(problem.seqlen_q / config.block_m), problem.variant.mask != "none")
    elif type(kv_splits) is not int or kv_splits < 1 or problem.heads_per_kv % kv_splits:
        raise ValueError(f"kv_splits must be a positive int dividing nheads // nheads_k = {problem.heads_per_kv} "
                         f"(or None: automatic); got {kv_splits!r}")
    return BackwardPlan(problem, config, dq_config, bool(atomic_dq), kv_splits, specs, lse_spec, grad_specs,
                        deterministic)


def flash_attn_backward(dout: Array, q: Array, k: Array, v: Array, out: Array, lse: Array, *,
                        softmax_scale: float | None = None, causal: bool = False, window_size: Window = (-1, -1),
                        softcap: float = 0.0, alibi_slopes: Array | None = None, deterministic: bool = False,
                        dq: Array | None = None, dk: Array | None = None, dv: Array | None = None,
                        atomic_dq: bool | None = None, config: configs.TileConfig | None = None,
                        dq_config: configs.TileConfig | None = None, kv_splits: int | None = None,
                        bias: Array | None = None, mask: Array | PreparedMask | None = None,
                        return_dbias: bool = False, precision: str | None = None, dropout_p: float = 0.0,
                        rng_state: tuple[int, int] | None = None) -> Grads:
    """Gradients of ``out = flash_attn_func(q, k, v, ...)`` for the upstream gradient ``dout``.

    Args:
        dout: (batch, seqlen_q, nheads, headdim), q's dtype; any strides with the head dim contiguous.
        q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes, bias, mask, precision, dropout_p:
            exactly as given to the forward.
        rng_state: with dropout, the (seed, offset) the forward used (required: the backward regenerates the
            pairs it dropped from it; see flash_attn_func).
        return_dbias: also return the bias's gradient: float32, the bias's own shape as given (summed over its
            broadcast dims of size 1; a stride-0 dim of full size gets its per-index gradient). Deterministic with
            ``deterministic=True``; otherwise a bias of full queries and keys shared by batches or heads (e.g.
            (1, H, Sq, Sk)) is summed over them with atomics (measured faster), whose order varies from run to
            run.
        out, lse: the forward's results (``flash_attn_func(..., return_lse=True)``).
        deterministic: guarantee bitwise-identical gradients from run to run. dQ is then computed by a second
            kernel that walks the keys in a fixed order (recomputing S and dP). Without it the dispatcher usually
            adds dQ with fp32 atomics inside the dK/dV kernel instead, whose order varies; the measured cost of
            determinism is in docs/performance.md. dK and dV are always deterministic, also with grouped-query
            attention (sums over a K/V head's query heads are taken in a fixed order).
        atomic_dq: force the dQ strategy (True: atomics, not deterministic; False: separate kernel); default:
            ``configs.use_atomic_dq`` (atomics for large problems at most head dims).
        kv_splits: grouped-query attention: over how many blocks each K/V head's query heads are spread (a
            divisor of nheads // nheads_k; more than 1 adds fp32 partial dK, dV and a kernel that sums them in a
            fixed order); default ``configs.kv_splits`` (every SM busy, no block's walk too long).
        dq, dk, dv: optional preallocated outputs (shape and dtype of q, k, v; any strides with the head dim
            contiguous), written in place and returned.
        config, dq_config: force tile configurations (TileConfig entries of the 'bwd' and 'bwd_dq' tables).

    Returns:
        (dq, dk, dv) in the dtypes and shapes of q, k, v (dk, dv with nheads_k heads: summed over each group's
        query heads); new contiguous arrays unless given. With ``return_dbias``, (dq, dk, dv, dbias).
    """
    if type(dout) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(flash_attn_backward, locals())
    if type(return_dbias) is not bool:
        raise TypeError(f"return_dbias must be a bool; got {return_dbias!r}")
    arrays = (q, k, v, dout, out, lse)
    given = {"dq": dq, "dk": dk, "dv": dv}
    blocks = mask.blocks() if isinstance(mask, PreparedMask) else None
    key = _call_key(arrays, (dq, dk, dv, alibi_slopes, bias, unwrap(mask)), softmax_scale, causal, window_size,
                    softcap, deterministic, atomic_dq, config, dq_config, kv_splits, return_dbias, blocks, precision,
                    dropout_p)
    plan = _PLANS.get(key)
    if plan is None:
        plan, arrays, alibi_slopes, bias, mask_array, given = _plan(
            (dout, q, k, v, out, lse), alibi_slopes, bias, unwrap(mask), given, key, softmax_scale=softmax_scale,
            causal=causal, window_size=window_size, softcap=softcap, deterministic=deterministic,
            atomic_dq=atomic_dq, config=config, dq_config=dq_config, kv_splits=kv_splits, return_dbias=return_dbias,
            mask_blocks=blocks, precision=precision, dropout_p=dropout_p)
        mask = mask if isinstance(mask, PreparedMask) else mask_array
    dropout = _dropout.resolve(plan.problem.dropout_p, rng_state, backward=True)
    return _on_device(plan.problem.device, plan.run, arrays, alibi_slopes, given, (None, None), bias, mask,
                      dropout)


def flash_attn_vjp(q: Array, k: Array, v: Array, dropout_p: float = 0.0, softmax_scale: float | None = None,
                   causal: bool = False, window_size: Window = (-1, -1), softcap: float = 0.0,
                   alibi_slopes: Array | None = None, deterministic: bool = False, *, bias: Array | None = None,
                   bias_requires_grad: bool = False, mask: Array | PreparedMask | None = None,
                   precision: str | None = None, rng_state: tuple[int, int] | None = None,
                   generator: _dropout.Generator | None = None) -> tuple[Array, Vjp]:
    """Forward pass plus a function that maps an upstream gradient to (dq, dk, dv).

    ``out, vjp = flash_attn_vjp(q, k, v, ...); dq, dk, dv = vjp(dout)``, with flash_attn_func's arguments. The
    closure holds q, k, v, out and the log-sum-exp (no score matrix); it may be called any number of times.
    With ``bias_requires_grad=True`` it returns (dq, dk, dv, dbias), dbias as flash_attn_backward's. With
    dropout the closure keeps the forward's random state (drawn from ``rng_state`` or ``generator`` as
    flash_attn_func does) and the backward regenerates the same dropped pairs.
    """
    if type(q) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(flash_attn_vjp, locals())
    if bias_requires_grad and bias is None:
        raise ValueError("bias_requires_grad=True needs a bias (bias=None was given)")
    mask = for_one_call(mask)  # one padded copy, if any, for the forward and backward
    dropout = _dropout.resolve(check_dropout(dropout_p), rng_state, generator)
    variant = dict(softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                   alibi_slopes=alibi_slopes, bias=bias, mask=mask, precision=precision, dropout_p=dropout_p,
                   rng_state=None if dropout is None else (dropout.seed, dropout.offset))
    out, lse = flash_attn_func(q, k, v, return_lse=True, **variant)

    def vjp(dout):
        return flash_attn_backward(dout, q, k, v, out, lse, deterministic=deterministic,
                                   return_dbias=bool(bias_requires_grad), **variant)

    return out, vjp

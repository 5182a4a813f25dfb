"""The backward pass: dQ, dK, dV from the forward's output and log-sum-exp, and a functional VJP."""
from __future__ import annotations

import math

import numpy as np

from . import _kernels
from ._device import device_limits
from ._validate import (as_cuda_array, check_backward_inputs, check_grad_output, check_qkv, check_softmax_scale,
                        needs_aligned_copy, spec_of)
from .configs import (bwd_dq_smem_bytes, bwd_smem_bytes, check_config, kernel_head_dim, select_config,
                      use_atomic_dq)
from .forward import LOG2E, _empty, flash_attn_func


def flash_attn_backward(dout, q, k, v, out, lse, softmax_scale=None, causal=False, deterministic=False, *,
                        dq=None, dk=None, dv=None, atomic_dq=None, config=None, dq_config=None):
    """Gradients of ``out = flash_attn_func(q, k, v, softmax_scale, causal)`` for the upstream gradient ``dout``.

    Args:
        dout: (batch, seqlen_q, nheads, headdim), q's dtype; any strides with the head dim contiguous.
        q, k, v, softmax_scale, causal: exactly as given to the forward.
        out, lse: the forward's results (``flash_attn_func(..., return_lse=True)``).
        deterministic: guarantee bitwise-identical gradients from run to run. dQ is then computed by a second
            kernel that walks the keys in a fixed order (recomputing S and dP). Without it the dispatcher usually
            adds dQ with fp32 atomics inside the dK/dV kernel instead, whose order varies; the measured cost of
            determinism is in docs/performance.md.
        atomic_dq: force the dQ strategy (True: atomics, not deterministic; False: separate kernel); default:
            ``configs.use_atomic_dq`` (atomics for large problems at most head dims).
        dq, dk, dv: optional preallocated outputs (shape and dtype of q, k, v; any strides with the head dim
            contiguous), written in place and returned.
        config, dq_config: force tile configurations (TileConfig entries of the 'bwd' and 'bwd_dq' tables).

    Returns:
        (dq, dk, dv) in the dtypes and shapes of q, k, v (new contiguous arrays unless given).
    """
    import cupy

    q, k, v = as_cuda_array(q, "q"), as_cuda_array(k, "k"), as_cuda_array(v, "v")
    dout, out, lse = as_cuda_array(dout, "dout"), as_cuda_array(out, "out"), as_cuda_array(lse, "lse")
    shape = check_qkv(spec_of(q), spec_of(k), spec_of(v))
    check_backward_inputs(shape, spec_of(q), spec_of(dout), spec_of(out), spec_of(lse))
    given = {name: (None if grad is None else as_cuda_array(grad, name), like)
             for name, grad, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v))}
    for name, (grad, like) in given.items():
        if grad is not None:
            check_grad_output(name, spec_of(grad), spec_of(like))
    scale = check_softmax_scale(softmax_scale, shape.head_dim)
    limits = device_limits(shape.device)
    kd = kernel_head_dim(shape.head_dim)
    if config is None:
        config = select_config("bwd", limits, shape.head_dim, causal)
    else:
        check_config("bwd", config, limits, shape.head_dim)
    if atomic_dq and deterministic:
        raise ValueError("atomic_dq=True adds dQ in an order that varies between runs; it cannot be deterministic")
    if atomic_dq is None:
        atomic_dq = not deterministic and use_atomic_dq(limits, shape.head_dim, shape.seqlen_q, shape.seqlen_k,
                                                        causal)
    if not atomic_dq:
        if dq_config is None:
            dq_config = select_config("bwd_dq", limits, shape.head_dim, causal)
        else:
            check_config("bwd_dq", dq_config, limits, shape.head_dim)
    b, sq, sk, h, d = shape.batch, shape.seqlen_q, shape.seqlen_k, shape.nheads, shape.head_dim
    dtype, causal = shape.dtype, bool(causal)

    with cupy.cuda.Device(shape.device):
        q, k, v, dout, out = (x.copy() if needs_aligned_copy(spec_of(x)) else x for x in (q, k, v, dout, out))
        lse = cupy.ascontiguousarray(lse)
        # Kernels write gradients straight into aligned buffers; others get a fresh one, copied over at the end.
        grads = {}
        for name, (grad, like) in given.items():
            direct = grad is not None and not needs_aligned_copy(spec_of(grad))
            grads[name] = (grad, grad if direct else _empty(like.shape, like.dtype))
        dq_buf, dk_buf, dv_buf = (grads[n][1] for n in ("dq", "dk", "dv"))

        if b * h * sq * sk == 0:  # no query or no key: every gradient that exists is zero
            for buf in (dq_buf, dk_buf, dv_buf):
                buf.fill(0)
        else:
            _launch(q, k, v, dout, out, lse, dq_buf, dk_buf, dv_buf, config, dq_config, kd, scale, causal,
                    bool(atomic_dq), dtype, shape)
        results = []
        for name in ("dq", "dk", "dv"):
            user, buf = grads[name]
            if user is not None and user is not buf:
                user[...] = buf
            results.append(user if user is not None else buf)
    return tuple(results)


def _strides(*arrays):
    return [np.int64(s // x.itemsize) for x in arrays for s in x.strides[:3]]


def _launch(q, k, v, dout, out, lse, dq, dk, dv, config, dq_config, kd, scale, causal, atomic_dq, dtype, shape):
    import cupy

    b, sq, sk, h, d, dev = shape.batch, shape.seqlen_q, shape.seqlen_k, shape.nheads, shape.head_dim, shape.device
    # delta = rowsum(dO o O) and lse in log2 units, one row of row_pitch floats per (batch, head): a multiple of 4
    # so the main kernel copies them 16 bytes at a time.
    row_pitch = (sq + 3) // 4 * 4
    delta = cupy.empty((b, h, row_pitch), cupy.float32)
    lse2 = cupy.empty((b, h, row_pitch), cupy.float32)
    # With atomic dQ, an fp32 accumulator that the preprocess kernel zeroes row by row; otherwise a placeholder
    # (the dK/dV kernel is then built without dQ, and the preprocess kernel gets a null pointer).
    dq_accum = cupy.empty((b, sq, h, d) if atomic_dq else (1,), cupy.float32)
    rows_grid = (math.ceil(b * h * sq / 4),)  # one warp per (batch, head, query) row, 4 per block
    pre = _kernels.bwd_preprocess_function(dtype, dev)
    pre(rows_grid, (128,),
        (out, dout, lse, delta, lse2, dq_accum if atomic_dq else np.uint64(0), *_strides(out, dout), np.int32(b),
         np.int32(h), np.int32(sq), np.int32(row_pitch), np.int32(d)))

    main = _kernels.bwd_function(config, kd, dtype, causal, atomic_dq, dev)

    def launch_dkdv():
        main((math.ceil(sk / config.block_n), h, b), (config.warps * 32,),
             (q, k, v, dout, lse2, delta, dq_accum, dk, dv, *_strides(q, k, v, dout, dk, dv), np.int32(h),
              np.int32(sq), np.int32(sk), np.int32(row_pitch), np.int32(d), np.float32(scale * LOG2E),
              np.float32(scale)),
             shared_mem=bwd_smem_bytes(config, kd))

    if atomic_dq:
        launch_dkdv()
        convert = _kernels.bwd_convert_dq_function(dtype, dev)
        convert(rows_grid, (128,), (dq_accum, dq, *_strides(dq), np.int32(b), np.int32(h), np.int32(sq), np.int32(d)))
        return
    dq_fn = _kernels.bwd_dq_function(dq_config, kd, dtype, causal, dev)
    # The dK/dV and dQ kernels write disjoint outputs: the dQ kernel runs on a side stream so that each one's
    # last, partly filled wave overlaps the other's work. Forked from and joined back into the caller's stream.
    caller = cupy.cuda.get_current_stream()
    side = _side_stream(dev)
    side.wait_event(caller.record())
    with side:
        dq_fn((math.ceil(sq / dq_config.block_m), h, b), (dq_config.warps * 32,),
              (q, k, v, dout, lse2, delta, dq, *_strides(q, k, v, dout, dq), np.int32(h), np.int32(sq),
               np.int32(sk), np.int32(row_pitch), np.int32(d), np.float32(scale * LOG2E), np.float32(scale)),
              shared_mem=bwd_dq_smem_bytes(dq_config, kd))
        joined = side.record()
    launch_dkdv()
    caller.wait_event(joined)


_side_streams = {}


def _side_stream(device_id):
    import cupy

    if device_id not in _side_streams:
        _side_streams[device_id] = cupy.cuda.Stream(non_blocking=True)
    return _side_streams[device_id]


def flash_attn_vjp(q, k, v, softmax_scale=None, causal=False, deterministic=False):
    """Forward pass plus a function that maps an upstream gradient to (dq, dk, dv).

    ``out, vjp = flash_attn_vjp(q, k, v); dq, dk, dv = vjp(dout)``. The closure holds q, k, v, out and the
    log-sum-exp (no score matrix); it may be called any number of times.
    """
    out, lse = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, return_lse=True)

    def vjp(dout):
        return flash_attn_backward(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal,
                                   deterministic=deterministic)

    return out, vjp

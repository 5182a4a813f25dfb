"""cupyflash.torch: autograd through the kernels. On the CPU (torch installed), the autograd.Function's plumbing
with a stand-in attention call; on a GPU, gradients of q, k, v and bias against the float64 reference (2x the naive
low-precision error plus a floor, as the CuPy backward tests), causal, GQA, varlen; NaN-poisoned outputs."""
import math

import numpy as np
import pytest

from conftest import library_skip_reason

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
import cupyflash.torch as ct  # noqa: E402

TORCH_GPU_SKIP = library_skip_reason("torch")
requires_torch_gpu = pytest.mark.skipif(TORCH_GPU_SKIP is not None, reason=f"torch GPU test: {TORCH_GPU_SKIP}")


def _reference(q, k, v, bias=None, causal=False):
    """Attention in q's dtype with torch ops ((B, S, H, D) layout, GQA by repeating K/V heads)."""
    group = q.shape[2] // k.shape[2]
    k, v = (x.repeat_interleave(group, dim=2) for x in (k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    if causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq).logical_not(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v), lse


class StandIn:
    """A DenseCall's interface computed with torch ops on the CPU: tests what the autograd.Function adds."""

    def __init__(self, causal=False):
        self.causal, self.dbias_asked = causal, []

    def forward(self, q, k, v, bias):
        out, lse = _reference(q, k, v, bias, self.causal)
        return out, lse, None

    def backward(self, dout, q, k, v, out, lse, bias, want_dbias):
        self.dbias_asked.append(want_dbias)
        inputs = [x.detach().requires_grad_() for x in (q, k, v)] + ([] if bias is None else [bias.detach()])
        if want_dbias:
            inputs[3].requires_grad_()
        with torch.enable_grad():
            out, _ = _reference(*inputs[:3], inputs[3] if bias is not None else None, self.causal)
            grads = torch.autograd.grad(out, [x for x in inputs if x.requires_grad], dout)
        return tuple(grads[:3]) + ((grads[3].float(),) if want_dbias else (None,))


@pytest.mark.parametrize("bias_grad", [None, False, True])
def test_the_function_passes_gradients_through_on_the_cpu(bias_grad):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 4, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k, v = (x.detach()[:, :, :2].clone().requires_grad_() for x in (k, v))  # GQA: 2 K/V heads
    bias = None if bias_grad is None else torch.randn(1, 4, 5, 5, generator=g, dtype=torch.float64,
                                                      requires_grad=bias_grad)
    call = StandIn(causal=True)
    out = ct._apply(call, q, k, v, bias, False)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    wrt = [q, k, v] + ([bias] if bias_grad else [])
    got = torch.autograd.grad(out, wrt, dout)
    want = torch.autograd.grad(_reference(q, k, v, bias, True)[0], wrt, dout)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.allclose(a, b)
    assert call.dbias_asked == [bool(bias_grad)]


def test_lse_is_returned_without_gradient_and_an_expanded_dout_works_on_the_cpu():
    q = torch.randn(1, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    out, lse = ct._apply(StandIn(), q, q, q, None, True)
    assert not lse.requires_grad and out.requires_grad
    out.sum().backward()  # dout is an expanded tensor of ones: stride 0 everywhere, copied by the adapter
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ---- GPU: the kernels through autograd against the float64 reference


def _as_torch(*arrays):
    return tuple(torch.from_dlpack(a) for a in arrays)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "tf32"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nheads,nheads_k", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_autograd_matches_float64(dtype, causal, nheads, nheads_k, deterministic):
    import cupy
    from gpu_helpers import make_problem

    from cupyflash._accuracy import PRECISION, check_against_reference, check_grads_against_reference

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(7, 2, 97, 130, nheads, nheads_k, 64, dtype)
    tq, tk, tv, tdout = _as_torch(q, k, v, dout)
    tq, tk, tv = (x.clone().requires_grad_() for x in (tq, tk, tv))
    out = ct.flash_attn_func(tq, tk, tv, causal=causal, deterministic=deterministic, precision=PRECISION[dtype])
    assert type(out) is torch.Tensor and out.dtype == tq.dtype and out.device == tq.device
    out.backward(tdout)
    scale = 1 / math.sqrt(64)
    check_against_reference(cupy.from_dlpack(out.detach()), None, q64, k64, v64, scale, causal, dtype)
    grads = tuple(cupy.from_dlpack(x.grad) for x in (tq, tk, tv))
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("bias_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("broadcast", [(False, False, False, False), (True, False, False, False),
                                       (True, True, False, True)])
def test_bias_gradient_matches_float64(dtype, bias_dtype, broadcast):
    import cupy
    from gpu_helpers import make_bias, make_problem

    from cupyflash._accuracy import assert_within_bounds, grad_errors

    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(8, 2, 77, 90, 3, 3, 64, dtype)
    bias, b64 = make_bias(np.random.default_rng(8), (2, 3, 77, 90), broadcast, bias_dtype, "contiguous")
    tq, tk, tv, tdout, tbias = _as_torch(q, k, v, dout, bias)
    tq, tk, tv, tbias = (x.clone().requires_grad_() for x in (tq, tk, tv, tbias))
    out = ct.flash_attn_func(tq, tk, tv, causal=True, bias=tbias, deterministic=True)
    out.backward(tdout)
    assert tbias.grad.shape == tbias.shape and tbias.grad.dtype == tbias.dtype
    # the float32 dbias the kernels computed, as the CuPy tests check it (the adapter rounds it to bias's dtype)
    *grads, dbias = cf_backward_with_dbias(q, k, v, dout, bias)
    parts = grad_errors((*grads, dbias), dout64, q64, k64, v64, 1 / math.sqrt(64), True, dtype, bias=b64)
    assert_within_bounds([parts], dtype)
    got = tuple(cupy.from_dlpack(x.grad) for x in (tq, tk, tv))
    for a, b in zip(got, grads):  # the adapter's gradients are the CuPy backward's, deterministic mode
        assert bool(cupy.array_equal(a.view(cupy.uint16), b.view(cupy.uint16)))
    want = torch.from_dlpack(dbias).to(tbias.dtype)
    assert torch.equal(tbias.grad, want)


def cf_backward_with_dbias(q, k, v, dout, bias):
    import cupyflash as cf

    out, lse = cf.flash_attn_func(q, k, v, causal=True, bias=bias, return_lse=True)
    return cf.flash_attn_backward(dout, q, k, v, out, lse, causal=True, bias=bias, return_dbias=True,
                                  deterministic=True)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
def test_mask_and_no_bias_gradient_when_bias_needs_none():
    from gpu_helpers import make_mask, make_problem

    import cupyflash as cf

    (q, k, v, dout), _ = make_problem(9, 1, 64, 64, 2, 2, 64, "float16")
    mask, _ = make_mask(np.random.default_rng(9), (1, 2, 64, 64), (True, False, False, False), "contiguous", 0.7)
    bias = torch.zeros(1, 2, 64, 64, device="cuda")  # requires no grad
    tq, tk, tv, tdout, tmask = _as_torch(q, k, v, dout, mask)
    tq = tq.clone().requires_grad_()
    out = ct.flash_attn_func(tq, tk, tv, bias=bias, mask=tmask, deterministic=True)
    out.backward(tdout)
    o, lse = cf.flash_attn_func(q, k, v, mask=mask, bias=cupy_of(bias), return_lse=True)
    dq, _, _ = cf.flash_attn_backward(dout, q, k, v, o, lse, mask=mask, bias=cupy_of(bias), deterministic=True)
    assert torch.equal(tq.grad, torch.from_dlpack(dq)) and torch.equal(out.detach(), torch.from_dlpack(o))


def cupy_of(t):
    import cupy

    return cupy.from_dlpack(t)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_varlen_autograd_equals_the_cupy_backward(dtype):
    import cupyflash as cf

    lens_q, lens_k = [5, 0, 33, 17], [9, 4, 40, 1]
    cu_q, cu_k = (torch.tensor(np.concatenate([[0], np.cumsum(n)]), dtype=torch.int32, device="cuda")
                  for n in (lens_q, lens_k))
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(sum(lens_q), 4, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(sum(lens_k), 2, 64, device="cuda", generator=g).to(dtype).requires_grad_() for _ in "kv")
    dout = torch.randn(q.shape, device="cuda", generator=g).to(dtype)
    out = ct.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True, deterministic=True)
    out.backward(dout)
    o, lse = cf.flash_attn_varlen_func(q.detach(), k.detach(), v.detach(), cu_q, cu_k, max(lens_q), max(lens_k),
                                       causal=True, return_lse=True)
    grads = cf.flash_attn_varlen_backward(dout, q.detach(), k.detach(), v.detach(), o, lse, cu_q, cu_k,
                                          max(lens_q), max(lens_k), causal=True, deterministic=True)
    assert torch.equal(out.detach(), o)
    for x, want in zip((q, k, v), grads):
        assert torch.isfinite(x.grad.float()).all() and torch.equal(x.grad, want)

"""Arrays of other libraries (cupyflash._interop): on the CPU, the detection and conversion logic with small fake
array classes; on a GPU with PyTorch, round trips of every entry point (dtype, device, zero-copy, given buffers
written in place, the caller's stream)."""
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import library_skip_reason, requires_gpu

import cupyflash as cf
from cupyflash import _interop


# ---- CPU: which library an array belongs to, and how it is imported


def _typed(module, name="Array", **attrs):
    """A class named ``name`` that claims to live in ``module`` (library_of reads the type's module)."""
    return type(name, (), {"__module__": module, **attrs})


@pytest.mark.parametrize("module,library", [
    ("torch", "_Torch"), ("torch.nn.parameter", "_Torch"), ("jaxlib._jax", "_Jax"),
    ("jax._src.interpreters.partial_eval", "_Jax"), ("numba.cuda.cudadrv.devicearray", "_Numba"),
    ("cupy", "_CuPy"), ("cupy._core.core", "_CuPy"), ("numpy", "Library"), ("torchvision.tv_tensors", "Library")])
def test_library_of_reads_the_top_package_of_the_type_module(module, library):
    assert type(_interop.library_of(_typed(module)())).__name__ == library


class _DLPackOn:
    """A DLPack exporter on device type ``device`` (2: CUDA, 1: CPU)."""

    def __init__(self, device):
        self.device = device

    def __dlpack_device__(self):
        return (self.device, 0)

    def __dlpack__(self, *args, **kwargs):
        raise RuntimeError("cannot export")


class _WithCAI:
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<f2", "data": (0, False), "version": 3}


def test_to_cupy_leaves_what_is_not_cuda_memory():
    for x in (np.zeros(3, np.float16), [1.0], None, 0.5, _DLPackOn(1)):
        assert _interop.to_cupy(x, "q") is None


def test_to_cupy_prefers_dlpack_and_falls_back_to_the_cuda_array_interface(monkeypatch):
    import cupy

    monkeypatch.setattr(cupy, "from_dlpack", lambda x: ("dlpack", x))
    monkeypatch.setattr(cupy, "asarray", lambda x: ("cai", x))
    both = type("Both", (_DLPackOn, _WithCAI), {})(2)
    assert _interop.to_cupy(both, "q") == ("dlpack", both)
    assert _interop.to_cupy(_DLPackOn(13), "q")[0] == "dlpack"  # CUDA managed memory
    cai = _WithCAI()
    assert _interop.to_cupy(cai, "k") == ("cai", cai)


def test_to_cupy_names_the_argument_when_an_import_fails(monkeypatch):
    import cupy

    def refuse(x):
        raise RuntimeError("cannot export")

    monkeypatch.setattr(cupy, "from_dlpack", refuse)
    with pytest.raises(TypeError, match="^v: could not import the CUDA array through DLPack: cannot export"):
        _interop.to_cupy(_DLPackOn(2), "v")

    monkeypatch.setattr(cupy, "asarray", refuse)
    with pytest.raises(TypeError, match="^bias: could not import .* __cuda_array_interface__: cannot export"):
        _interop.to_cupy(_WithCAI(), "bias")


# ---- CPU: a call from a fake library, with a fake CuPy array class standing in for cupy.ndarray


class FakeCupy:
    def __init__(self, source=None):
        self.source = source


FakeForeign = _typed("fakelib.arrays", "FakeForeign", __init__=lambda self, tag="x": setattr(self, "tag", tag))
FakeTracer = _typed("fakelib.tracing", "FakeTracer")


class FakeLibrary(_interop.Library):
    def export(self, a):
        out = FakeForeign("exported")
        out.cupy = a
        return out

    def check(self, x, name):
        if isinstance(x, FakeTracer):
            raise _interop.TracerError(_interop.jit_message(name))


@pytest.fixture
def fake_library(monkeypatch):
    """FakeForeign arrays hold CUDA memory (imported as FakeCupy views), FakeCupy plays cupy.ndarray."""
    imported = []

    def to_cupy(x, name):
        if isinstance(x, FakeForeign):
            imported.append(name)
            return FakeCupy(x)
        return None

    monkeypatch.setattr(_interop, "ndarray", FakeCupy)
    monkeypatch.setattr(_interop, "to_cupy", to_cupy)
    monkeypatch.setitem(_interop._BY_PACKAGE, "fakelib", FakeLibrary())
    return imported


def attention(q, k, v, softmax_scale=None, window_size=(-1, -1), *, bias=None, dq=None, config=None):
    """Stands for a public entry point: checks what reached it, returns (out, given dq, vjp-like, scalar)."""
    assert all(type(x) is FakeCupy for x in (q, k, v))
    assert bias is None or type(bias) is FakeCupy
    return FakeCupy(), dq, attention, 3


def test_a_foreign_call_imports_its_arrays_and_returns_the_callers_library(fake_library):
    q, k, v, dq, bias = (FakeForeign(t) for t in "qkvdb")
    config = object()
    out, dq_back, fn, three = _interop.call(attention, dict(q=q, k=k, v=v, softmax_scale=0.5, window_size=(3, 0),
                                                            bias=bias, dq=dq, config=config))
    assert type(out) is FakeForeign and out.tag == "exported" and type(out.cupy) is FakeCupy
    assert dq_back is dq  # a buffer given to be written comes back as the caller's own object
    assert fn is attention and three == 3  # what is not an array passes through
    assert fake_library == ["q", "k", "v", "bias", "dq"]  # scalars, tuples, None and other objects: no import


def test_a_cupy_call_goes_straight_through(fake_library):
    q = FakeCupy()
    called = []

    def fn(q, k):
        called.append((q, k))
        return q

    assert _interop.call(fn, dict(q=q, k=q)) is q
    assert called == [(q, q)] and fake_library == []


def test_a_leading_argument_that_is_no_cuda_array_raises_the_named_type_error(fake_library):
    with pytest.raises(TypeError, match=r"^dout must be a CUDA array.*numpy\.ndarray.*device type is 1"):
        _interop.call(attention, dict(dout=np.zeros(2), q=FakeForeign()))


def test_a_tracer_raises_before_anything_is_imported_or_run(fake_library):
    with pytest.raises(_interop.TracerError, match="k is a JAX tracer.*jax.jit.*no JAX FFI custom call"):
        _interop.call(attention, dict(q=FakeForeign(), k=FakeTracer(), v=FakeForeign()))
    assert fake_library == ["q"]


# ---- CPU: every public entry point hands a foreign call to _interop, with its own parameters


ENTRY_POINTS = {
    "flash_attn_func": ("q", 3), "flash_attn_backward": ("dout", 6), "flash_attn_vjp": ("q", 3),
    "flash_attn_varlen_func": ("q", 7), "flash_attn_varlen_backward": ("dout", 10), "flash_attn_varlen_vjp": ("q", 7),
    "prepare_mask": ("mask", 1)}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_public_entry_points_hand_foreign_arrays_to_interop(name, monkeypatch):
    import inspect

    fn = getattr(cf, name)
    first, positional = ENTRY_POINTS[name]
    seen = []
    monkeypatch.setattr(_interop, "call", lambda f, arguments: seen.append((f, arguments)) or "handed over")
    args = [FakeForeign()] + [object()] * (positional - 1)
    assert fn(*args) == "handed over"
    (f, arguments), = seen
    assert f is fn and list(arguments) == list(inspect.signature(fn).parameters)
    assert arguments[first] is args[0]


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_a_numpy_leading_array_raises_type_error_naming_it(name):
    first, positional = ENTRY_POINTS[name]
    args = [np.zeros((1, 2, 1, 8), np.float16)] * positional
    with pytest.raises(TypeError, match=f"^{first} must be a CUDA array.*numpy.ndarray"):
        getattr(cf, name)(*args)


def test_an_external_stream_is_made_once_per_pointer_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = _interop.external_stream(0x1234, 0)
        assert (s.ptr, s.device_id) == (0x1234, 0) and _interop.external_stream(0x1234, 0) is s
        assert _interop.external_stream(0x1234, 1) is not s


def _python(code):
    """Run code in a fresh interpreter that imports this checkout's cupyflash."""
    root = pathlib.Path(cf.__file__).parents[1]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)


def test_importing_cupyflash_imports_neither_torch_nor_jax():
    result = _python("import sys, cupyflash; print(sorted({'torch', 'jax'} & set(sys.modules)))")
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
@pytest.mark.parametrize("adapter,library", [("torch", "torch"), ("jax", "jax")])
def test_an_adapter_without_its_library_raises_a_clear_import_error(adapter, library):
    result = _python(f"import sys; sys.modules[{library!r}] = None\n"  # makes `import {library}` fail
                     f"try:\n    import cupyflash.{adapter}\nexcept ImportError as e:\n    print('ImportError:', e)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ImportError: cupyflash.{adapter} needs"), result.stdout


# ---- GPU with PyTorch: every entry point round trips torch tensors


TORCH_SKIP = library_skip_reason("torch")
requires_torch_gpu = pytest.mark.skipif(TORCH_SKIP is not None, reason=f"torch GPU test: {TORCH_SKIP}")
TORCH_DTYPES = ["float16", "bfloat16"]


def _torch_problem(dtype, seqlen_q=77, seqlen_k=90, nheads=4, nheads_k=2):
    """(q, k, v, dout) as torch tensors and as the CuPy views of the same memory."""
    import torch
    from gpu_helpers import make_problem

    arrays, _ = make_problem(3, 2, seqlen_q, seqlen_k, nheads, nheads_k, 64, dtype)
    return tuple(torch.from_dlpack(a) for a in arrays), arrays


@pytest.fixture
def exported(monkeypatch):
    """The CuPy arrays the torch adapter exported, by pointer: the tensors must share their memory."""
    pointers = []
    torch_library = _interop._BY_PACKAGE["torch"]
    original = torch_library.export
    monkeypatch.setattr(torch_library, "export", lambda a: pointers.append(a.data.ptr) or original(a))
    return pointers


def _same(tensor, array):
    """Bitwise equality of a torch tensor and a CuPy array (same kernels, same inputs)."""
    import cupy

    got = cupy.from_dlpack(tensor)
    return got.dtype == array.dtype and bool(cupy.array_equal(got.view(cupy.uint8), array.view(cupy.uint8)))


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_forward_returns_tensors_sharing_the_results_memory(dtype, exported):
    import torch

    (q, k, v, _), (cq, ck, cv, _) = _torch_problem(dtype)
    out, lse, probs = cf.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    for t in (out, lse, probs):
        assert type(t) is torch.Tensor and t.device == q.device
    assert out.dtype == q.dtype and lse.dtype == probs.dtype == torch.float32
    assert [t.data_ptr() for t in (out, lse, probs)] == exported  # zero-copy
    want_out, want_lse = cf.flash_attn_func(cq, ck, cv, causal=True, return_lse=True)
    assert _same(out, want_out) and _same(lse, want_lse)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_backward_writes_given_buffers_in_place_and_returns_them(dtype):
    import torch

    (q, k, v, dout), (cq, ck, cv, cdout) = _torch_problem(dtype)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
    dq = torch.empty_like(q)
    dk_wide = torch.empty(k.shape[:3] + (72,), dtype=k.dtype, device=k.device)  # strided view: written in place
    dk = dk_wide[..., :64]
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True, dq=dq, dk=dk)
    assert grads[0] is dq and grads[1] is dk and type(grads[2]) is torch.Tensor
    co, clse = cf.flash_attn_func(cq, ck, cv, return_lse=True)
    want = cf.flash_attn_backward(cdout, cq, ck, cv, co, clse, deterministic=True)
    for got, w in zip(grads, want):
        assert got.dtype == q.dtype and _same(got.contiguous(), w)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_vjp_and_its_closure_return_tensors(dtype):
    import torch

    (q, k, v, dout), (cq, ck, cv, cdout) = _torch_problem(dtype)
    bias = torch.randn(1, 4, 77, 90, device=q.device)
    out, vjp = cf.flash_attn_vjp(q, k, v, causal=True, bias=bias, bias_requires_grad=True, deterministic=True)
    grads = vjp(dout)
    assert type(out) is torch.Tensor and all(type(g) is torch.Tensor for g in grads)
    _, cvjp = cf.flash_attn_vjp(cq, ck, cv, causal=True, bias=cf_array(bias), bias_requires_grad=True,
                                deterministic=True)
    for got, want in zip(grads, cvjp(cdout)):
        assert _same(got, want)
    assert type(vjp(cdout)[0]) is not torch.Tensor  # the closure answers in dout's library


def cf_array(t):
    import cupy

    return cupy.from_dlpack(t)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_varlen_round_trip(dtype):
    import torch

    lens_q, lens_k = [5, 0, 33], [9, 4, 40]
    cu_q, cu_k = (torch.tensor(np.concatenate([[0], np.cumsum(n)]), dtype=torch.int32, device="cuda")
                  for n in (lens_q, lens_k))
    tdtype = getattr(torch, dtype)
    q = torch.randn(sum(lens_q), 4, 64, device="cuda").to(tdtype)
    k, v = (torch.randn(sum(lens_k), 2, 64, device="cuda").to(tdtype) for _ in "kv")
    dout = torch.randn(q.shape, device="cuda").to(tdtype)
    lengths = (cu_q, cu_k, max(lens_q), max(lens_k))
    out, lse = cf.flash_attn_varlen_func(q, k, v, *lengths, causal=True, return_lse=True)
    grads = cf.flash_attn_varlen_backward(dout, q, k, v, out, lse, *lengths, causal=True, deterministic=True)
    out2, vjp = cf.flash_attn_varlen_vjp(q, k, v, *lengths, causal=True, deterministic=True)
    assert all(type(t) is torch.Tensor and t.device == q.device for t in (out, lse, *grads, out2))
    assert torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(grads, vjp(dout)))
    c = [cf_array(t) for t in (q, k, v, dout, cu_q, cu_k)]
    cout, clse = cf.flash_attn_varlen_func(*c[:3], *c[4:], max(lens_q), max(lens_k), causal=True, return_lse=True)
    assert _same(out, cout) and _same(lse, clse)


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
def test_torch_prepared_mask():
    import torch

    (q, k, v, _), (cq, ck, cv, _) = _torch_problem("bfloat16")
    mask = torch.rand(1, 1, 77, 90, device="cuda") < 0.6
    prepared = cf.prepare_mask(mask)
    assert isinstance(prepared, cf.PreparedMask)
    out = cf.flash_attn_func(q, k, v, mask=prepared)
    assert type(out) is torch.Tensor and _same(out, cf.flash_attn_func(cq, ck, cv, mask=cf_array(mask)))


@requires_torch_gpu
@pytest.mark.usefixtures("poisoned_outputs")
def test_torch_calls_run_on_torchs_current_stream(monkeypatch):
    """The kernels launch on PyTorch's current stream (a side stream here), after work queued on it before the
    call (a long sleep, then the inputs written): synchronizing that stream alone gives the right results."""
    import torch

    from cupyflash import backward, forward

    launched = []
    for module in (forward, backward):
        original = module.current_stream_ptr
        monkeypatch.setattr(module, "current_stream_ptr", lambda original=original: launched.append(original())
                            or launched[-1])
    (q0, k0, v0, dout0), (cq, ck, cv, cdout) = _torch_problem("float16", 1024, 1024, 8, 8)
    co, clse = cf.flash_attn_func(cq, ck, cv, return_lse=True)
    cgrads = cf.flash_attn_backward(cdout, cq, ck, cv, co, clse, deterministic=True)
    torch.cuda.synchronize()
    launched.clear()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # the inputs below are written well after the call returns to the host
        q, k, v, dout = (x * 1 for x in (q0, k0, v0, dout0))
        out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
        grads = cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True)
    assert launched and set(launched) == {side.cuda_stream}
    side.synchronize()
    assert _same(out, co) and all(_same(g, w) for g, w in zip(grads, cgrads))


@requires_gpu
def test_a_cuda_array_interface_exporter_gets_cupy_arrays_back():
    """An unknown library's array with only __cuda_array_interface__: imported zero-copy, results stay CuPy."""
    import cupy

    from gpu_helpers import make_problem

    (cq, ck, cv, _), _ = make_problem(4, 2, 77, 90, 4, 2, 64, "float16")
    Exporter = _typed("somelib", "Exporter",
                      __init__=lambda self, a: setattr(self, "__cuda_array_interface__", a.__cuda_array_interface__))
    out = cf.flash_attn_func(Exporter(cq), Exporter(ck), Exporter(cv))
    assert type(out) is cupy.ndarray and _same_cupy(out, cf.flash_attn_func(cq, ck, cv))


def _same_cupy(a, b):
    import cupy

    return bool(cupy.array_equal(a.view(cupy.uint8), b.view(cupy.uint8)))

"""Arrays of other libraries (cupyflash._interop): on the CPU, the detection and conversion logic with small fake
array classes; on a GPU with PyTorch, round trips of every entry point (dtype, device, zero-copy, given buffers
written in place, the caller's stream)."""
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

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

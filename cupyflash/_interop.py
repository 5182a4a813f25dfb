"""Arrays of other libraries at the API boundary: in as CuPy views, out as the caller's own arrays.

A public function that hands calls to :func:`call` takes CUDA arrays of any library (DLPack or
``__cuda_array_interface__``: CuPy, PyTorch, JAX, Numba, ...). When its leading array (q, or dout in a backward)
is not a CuPy array, every CUDA array argument is imported without copying, so that the call reaches the plan
cache like a CuPy call; the kernels run on the caller's stream where its library has one (PyTorch's current
stream); and the results come back as arrays of the leading array's library, zero-copy (``torch.from_dlpack``,
``jax.dlpack.from_dlpack``, ``numba.cuda.as_cuda_array``), a buffer the caller passed in (``dq=``) as the caller's
own object. CuPy calls pay one type check.
"""
from __future__ import annotations

import threading
import warnings

_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged
ndarray = None  # cupy.ndarray, imported on the first call so that CPU-only machines never need CuPy
_PASS = frozenset((int, float, bool, str, tuple, type(None)))  # never arrays: no import attempted


class TracerError(TypeError):
    """A JAX tracer reached cupyflash (jax.jit, vmap, ...): the kernels need concrete device arrays."""


def jit_message(name: str) -> str:
    return (f"{name} is a JAX tracer: cupyflash runs its kernels eagerly on concrete arrays and cannot be traced "
            f"by jax.jit (or vmap, scan, ...), since it has no JAX FFI custom call yet. Call it outside jit.")


class Library:
    """Arrays of an unknown library: results stay CuPy arrays, kernels run on CuPy's current stream."""

    def stream(self, like):
        """The CuPy stream the call should run on, or None for CuPy's current one."""
        return None

    def export(self, a):
        """A CuPy result as this library's array, sharing its memory."""
        return a

    def check(self, x, name: str) -> None:
        """Raise, before any work, for arguments that cannot be run at all."""

    def exportable(self, x):
        """x in a form whose DLPack export the library allows."""
        return x


class _CuPy(Library):
    pass


class _Torch(Library):
    def stream(self, like):
        import torch

        if not like.is_cuda:
            return None  # validation rejects it, naming the argument
        return external_stream(torch.cuda.current_stream(like.device).cuda_stream, like.device.index)

    def export(self, a):
        import torch

        return torch.from_dlpack(a)

    def exportable(self, x):
        import torch

        # a tensor that requires grad refuses DLPack; the detached view shares its memory
        return x.detach() if isinstance(x, torch.Tensor) else x


class _Jax(Library):
    # JAX has no stream to share: the DLPack exchange orders JAX's stream and CuPy's (each side passes its stream).
    def check(self, x, name):
        import jax

        if isinstance(x, jax.core.Tracer):
            raise TracerError(jit_message(name))

    def export(self, a):
        import jax.dlpack

        return jax.dlpack.from_dlpack(a)


class _Numba(Library):
    def export(self, a):
        from numba import cuda

        return cuda.as_cuda_array(a)


_CUPY = _CuPy()
_OTHER = Library()
_BY_PACKAGE = {"cupy": _CUPY, "torch": _Torch(), "jax": _Jax(), "jaxlib": _Jax(), "numba": _Numba()}


def library_of(x) -> Library:
    """The library whose arrays x is (by the top-level package of its type's module)."""
    return _BY_PACKAGE.get(type(x).__module__.partition(".")[0], _OTHER)


def to_cupy(x, name: str):
    """x as a cupy.ndarray without copying, or None if x does not hold CUDA memory. Imports through DLPack
    (which orders the producer's stream before CuPy's current one), else ``__cuda_array_interface__``."""
    import cupy

    if isinstance(x, cupy.ndarray):  # a subclass as the class itself, which the API's fast path checks for
        return x if type(x) is cupy.ndarray else cupy.ndarray(x.shape, x.dtype, x.data, x.strides)
    x = library_of(x).exportable(x)
    dlpack_device = getattr(x, "__dlpack_device__", None)
    if dlpack_device is not None:
        if int(dlpack_device()[0]) not in _DLPACK_CUDA_DEVICES:
            return None
        try:
            return cupy.from_dlpack(x)
        except Exception as exc:  # dtype CuPy cannot represent, for instance
            raise TypeError(f"{name}: could not import the CUDA array through DLPack: {exc}") from exc
    if hasattr(x, "__cuda_array_interface__"):
        try:
            return cupy.asarray(x)  # a view of the same memory
        except Exception as exc:
            raise TypeError(f"{name}: could not import the CUDA array through __cuda_array_interface__: "
                            f"{exc}") from exc
    return None


_streams = {}  # (device, stream pointer) -> CuPy wrapper of that foreign stream
_streams_lock = threading.Lock()


def external_stream(ptr: int, device: int):
    """A CuPy stream object for a foreign stream, made once per (device, pointer): it owns nothing, so one made
    for an earlier stream at the same address serves a later one. (Not ``Stream.from_external``: that returns a
    ``Stream``, which destroys its handle when collected.)"""
    key = (device, ptr)
    stream = _streams.get(key)
    if stream is None:
        import cupy

        with warnings.catch_warnings():  # deprecated in CuPy 14 for from_external, which we must not use (above)
            warnings.simplefilter("ignore", DeprecationWarning)
            stream = cupy.cuda.ExternalStream(ptr, device)
        with _streams_lock:
            if len(_streams) > 64:  # streams come and go; the wrappers are cheap to remake
                _streams.clear()
            _streams[key] = stream
    return stream


class _Call:
    """One call from a foreign library: the arguments imported, and the results sent back."""

    def __init__(self, library: Library):
        self.library = library
        self.arrived = []  # (cupy view, caller's object): buffers given to be written go back as themselves

    def arrive(self, x, name):
        if type(x) is ndarray or type(x) in _PASS:
            return x
        library_of(x).check(x, name)
        a = to_cupy(x, name)
        if a is None:  # not CUDA memory, or not an array at all: validation says what is wrong with it
            return x
        self.arrived.append((a, x))
        return a

    def run(self, fn, arguments):
        arguments = {name: self.arrive(x, name) for name, x in arguments.items()}
        name, like = next(iter(arguments.items()))
        if type(like) is not ndarray:  # fn would hand it back here: say what is wrong with it instead
            from ._validate import as_cuda_array

            as_cuda_array(like, name)
        return self.leave(fn(**arguments))

    def leave(self, result):
        if type(result) is tuple:
            return tuple(self.leave(r) for r in result)
        if type(result) is not ndarray:
            return result  # a PreparedMask; a vjp closure (its flash_attn_backward converts dout on its own)
        for a, original in self.arrived:
            if a is result:
                return original
        return self.library.export(result)


def call(fn, arguments: dict):
    """``fn(**arguments)`` for a call whose leading array (its first parameter) is not a CuPy array.

    A public function opens with ``if type(q) is not _interop.ndarray: return _interop.call(fn, locals())``: a
    CuPy call pays one type check (a decorator forwarding ``*args, **kwargs`` cost ten times more, about 0.4 us,
    against a 20 us budget for the whole call)."""
    global ndarray
    if ndarray is None:  # the first call of the process
        import cupy

        ndarray = cupy.ndarray
    like = next(iter(arguments.values()))
    if type(like) is ndarray:
        return fn(**arguments)
    library = library_of(like)
    stream = library.stream(like)
    if stream is None:
        return _Call(library).run(fn, arguments)
    import cupy

    # imports, launches and exports all under the caller's stream, so the DLPack exchanges order nothing extra
    with cupy.cuda.Device(stream.device_id), stream:
        return _Call(library).run(fn, arguments)

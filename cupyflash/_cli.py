"""What every command line entry point shares: one line on stderr and an exit status instead of a traceback.

Exit statuses: 0 done, 1 a check or a compile failed, 2 the machine lacks what the command needs (a GPU, CuPy,
NVRTC) or the arguments were wrong (argparse's own status).
"""
from __future__ import annotations

import importlib
import sys

MISSING = 2
INSTALL_CUPY = "pip install 'cupyflash[cuda12]' (or [cuda13])"


def die(prog: str, message: str, status: int) -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}".rstrip(": ")


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor), through CuPy if it loads, else through the library itself (no GPU needed)."""
    try:
        import cupy

        return tuple(cupy.cuda.nvrtc.getVersion())
    except Exception:
        import ctypes

        from ._nvrtc import _libnvrtc

        major, minor = ctypes.c_int(), ctypes.c_int()
        _libnvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return major.value, minor.value


def require_gpu(prog: str) -> None:
    """Exit with status 2 and one line saying what is missing and what to do, unless CuPy sees a GPU and NVRTC
    loads (every kernel is compiled at run time)."""
    try:
        importlib.import_module("cupy")
    except ImportError as exc:
        die(prog, f"CuPy is not installed ({first_line(exc)}); install it: {INSTALL_CUPY}", MISSING)
    from ._device import no_gpu_reason

    reason = no_gpu_reason()
    if reason is not None:
        die(prog, f"needs a CUDA GPU and found none: {reason}. Run it on a machine with an NVIDIA GPU of compute "
                  "capability 8.0 or newer and its driver (`python -m cupyflash info` shows what is visible)",
            MISSING)
    try:
        nvrtc_version()
    except Exception as exc:
        die(prog, f"NVRTC, which compiles the kernels, does not load ({first_line(exc)}); install it: "
                  "pip install nvidia-cuda-nvrtc-cu12 (or the CUDA toolkit)", MISSING)

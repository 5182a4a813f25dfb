"""``python -m cupyflash info``: versions, the GPUs CuPy sees with their limits, and the tiles the dispatcher picks.

Works without a GPU (prints what can be known and says that no GPU is visible) and always exits with status 0.
The tile lines come from the dispatcher itself (configs.select_config, a pure function of the device's limits).
"""
from __future__ import annotations

import itertools
import os
import platform
import sys

from . import __version__
from ._cli import INSTALL_CUPY, first_line, nvrtc_version

#: Representative problems: dtype x head dim x causal.
# float32 at each precision ("float32/highest", "float32/tf32")
DTYPES, HEAD_DIMS, CAUSALS = ("float16", "bfloat16", "float32/highest", "float32/tf32"), (64, 128, 256), (False, True)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"  # CUDA's 12090 is 12.9


def _probe(fn) -> str:
    """fn()'s text, or why it could not be had: info reports, it never fails."""
    try:
        return fn()
    except Exception as exc:
        return f"unknown ({first_line(exc)})"


def version_lines() -> list[str]:
    import numpy

    lines = [f"cupyflash {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
             f"Python {platform.python_version()}, NumPy {numpy.__version__}"]
    try:
        import cupy
    except ImportError:
        return lines + [f"CuPy: not installed ({INSTALL_CUPY})",
                        f"NVRTC: {_probe(lambda: '%d.%d' % nvrtc_version())}"]
    runtime = cupy.cuda.runtime
    driver = _probe(lambda: _cuda_version(runtime.driverGetVersion()) if runtime.driverGetVersion()
                    else "none (no CUDA driver loaded)")
    return lines + [f"CuPy {cupy.__version__}",
                    f"NVRTC {_probe(lambda: '%d.%d' % nvrtc_version())}",
                    f"CUDA runtime {_probe(lambda: _cuda_version(runtime.runtimeGetVersion()))}, "
                    f"driver {driver}"]


def device_line(index: int, limits) -> str:
    cc = limits.compute_capability
    return (f"GPU {index}: {limits.name}, compute capability {cc // 10}.{cc % 10}, {limits.sm_count} SMs, shared "
            f"memory {limits.smem_per_block_optin // 1024} KiB per block (opt-in), "
            f"{limits.smem_per_sm // 1024} KiB per SM")


def tile_lines(limits) -> list[str]:
    """The families that run on the device and, per representative problem, the tiles of the forward, the
    backward's dK/dV kernel and its dQ kernel (deterministic, or small problems), as the dispatcher picks them."""
    from .configs import NoConfigFits, family_for, select_config
    from .families import FAMILIES
    from .problem import Variant

    lines = [f"  family {f.name}: {f.summary} "
             f"[{'runs here' if f.min_cc <= limits.compute_capability <= f.max_cc else 'not on this GPU'}]"
             for f in FAMILIES]
    try:
        family_for(limits)
    except NoConfigFits as exc:
        return lines + [f"  no kernels for this GPU: {exc}"]
    lines.append("  tiles picked (forward | backward dK/dV | backward dQ):")
    for head_dim, causal in itertools.product(HEAD_DIMS, CAUSALS):
        by_dtype = {}  # the dtypes share their picks today: one line for those that do
        for dtype in DTYPES:
            name, _, precision = dtype.partition("/")
            variant = Variant(name, "band" if causal else "none", precision=precision)
            try:
                tiles = " | ".join(str(select_config(kind, limits, head_dim, causal, variant))
                                   for kind in ("fwd", "bwd", "bwd_dq"))
            except NoConfigFits as exc:
                tiles = f"none: {exc}"
            by_dtype.setdefault(tiles, []).append(dtype)
        lines += [f"    head dim {head_dim:3} {'causal' if causal else 'full  '} {', '.join(dtypes)}: {tiles}"
                  for tiles, dtypes in by_dtype.items()]
    return lines


def gpu_lines() -> list[str]:
    from ._device import device_limits, no_gpu_reason

    reason = no_gpu_reason()
    if reason is not None:
        return [f"no GPU visible: {reason}; GPU commands (selftest, bench, precompile) need one"]
    import cupy

    lines = []
    for index in range(cupy.cuda.runtime.getDeviceCount()):
        try:
            limits = device_limits(index)
        except Exception as exc:
            lines.append(f"GPU {index}: unreadable ({first_line(exc)})")
            continue
        lines += [device_line(index, limits)] + tile_lines(limits)
    return lines


def main(argv=None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m cupyflash info", description="Versions, the GPUs CuPy sees with their "
                            "limits, and the tiles the dispatcher picks; works without a GPU.").parse_args(argv)
    print("\n".join(version_lines() + gpu_lines()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

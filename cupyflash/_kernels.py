"""Turning (kernel family, tile config, dtype, flags) into a compiled, launchable CuPy function.

Sources are read from ``cuda_src/`` with their ``#include "..."`` headers spliced in, so the text CuPy hashes for
its on-disk cache covers every header: editing any ``.cu``/``.cuh`` file invalidates the cached binaries.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from pathlib import Path

from .configs import TileConfig, bwd_dq_smem_bytes, bwd_smem_bytes, fwd_smem_bytes

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
COMPILE_OPTIONS = ("-std=c++17", "-DCUPYFLASH_RUNTIME=1")
_ELEM_TAG = {"float16": "cf::f16", "bfloat16": "cf::bf16"}


def source_dir() -> Path:
    """cuda_src/ beside the package (a checkout or editable install), or inside it (an installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "cuda_src", here / "cuda_src"):
        if (candidate / "flash_fwd.cu").is_file():
            return candidate
    raise FileNotFoundError(f"cupyflash's CUDA sources were not found next to {here}")


@functools.lru_cache(maxsize=None)
def load_source(filename: str) -> str:
    """The translation unit ``filename`` with its quoted includes inlined once each (like #pragma once)."""
    root = source_dir()
    seen: set[str] = set()

    def splice(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (root / name).read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda m: splice(m.group(1)), text)

    return splice(filename)


def fwd_kernel_name(config: TileConfig, kernel_hdim: int, dtype: str, causal: bool) -> str:
    """The C++ template instance that implements this forward variant (the NVRTC name expression)."""
    return (f"cf::flash_fwd_kernel<{_ELEM_TAG[dtype]}, {kernel_hdim}, {config.block_m}, {config.block_n}, "
            f"{config.warps}, {config.stages}, {config.blocks_per_sm}, {'true' if causal else 'false'}>")


def bwd_kernel_name(config: TileConfig, kernel_hdim: int, dtype: str, causal: bool, atomic_dq: bool) -> str:
    """The dK/dV kernel instance (with or without the atomic dQ accumulation)."""
    return (f"cf::flash_bwd_dkdv_kernel<{_ELEM_TAG[dtype]}, {kernel_hdim}, {config.block_m}, {config.block_n}, "
            f"{config.warps}, {config.stages}, {config.blocks_per_sm}, {'true' if causal else 'false'}, "
            f"{'true' if atomic_dq else 'false'}, {config.d_split}>")


def bwd_dq_kernel_name(config: TileConfig, kernel_hdim: int, dtype: str, causal: bool) -> str:
    return (f"cf::flash_bwd_dq_kernel<{_ELEM_TAG[dtype]}, {kernel_hdim}, {config.block_m}, {config.block_n}, "
            f"{config.warps}, {config.stages}, {config.blocks_per_sm}, {'true' if causal else 'false'}>")


def bwd_preprocess_kernel_name(dtype: str) -> str:
    return f"cf::flash_bwd_preprocess_kernel<{_ELEM_TAG[dtype]}>"


def bwd_convert_dq_kernel_name(dtype: str) -> str:
    return f"cf::flash_bwd_convert_dq_kernel<{_ELEM_TAG[dtype]}>"


_lock = threading.Lock()
_functions: dict[tuple, object] = {}


def _announce(what: str, seconds: float) -> None:
    # Only real compiles are worth a line; a load from CuPy's disk cache takes milliseconds.
    if seconds > 0.25 and not os.environ.get("CUPYFLASH_QUIET"):
        print(f"cupyflash: compiled {what} in {seconds:.1f} s (cached on disk from now on)", file=sys.stderr)


def get_function(source_file: str, name: str, smem_bytes: int, device_id: int):
    """Compile (once per device and process) and return the kernel ``name`` from ``source_file``, with its
    dynamic shared-memory limit raised to ``smem_bytes``."""
    key = (source_file, name, device_id)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    import cupy

    with _lock:
        fn = _functions.get(key)
        if fn is None:
            with cupy.cuda.Device(device_id):
                start = time.perf_counter()
                module = cupy.RawModule(code=load_source(source_file), options=COMPILE_OPTIONS,
                                        name_expressions=(name,))
                fn = module.get_function(name)
                if smem_bytes > 48 * 1024:
                    fn.max_dynamic_shared_size_bytes = smem_bytes
                _announce(f"{name} for sm_{cupy.cuda.Device(device_id).compute_capability}",
                          time.perf_counter() - start)
            _functions[key] = fn
    return fn


def fwd_function(config: TileConfig, kernel_hdim: int, dtype: str, causal: bool, device_id: int):
    return get_function("flash_fwd.cu", fwd_kernel_name(config, kernel_hdim, dtype, causal),
                        fwd_smem_bytes(config, kernel_hdim), device_id)


def bwd_function(config: TileConfig, kernel_hdim: int, dtype: str, causal: bool, atomic_dq: bool, device_id: int):
    return get_function("flash_bwd.cu", bwd_kernel_name(config, kernel_hdim, dtype, causal, atomic_dq),
                        bwd_smem_bytes(config, kernel_hdim), device_id)


def bwd_dq_function(config: TileConfig, kernel_hdim: int, dtype: str, causal: bool, device_id: int):
    return get_function("flash_bwd.cu", bwd_dq_kernel_name(config, kernel_hdim, dtype, causal),
                        bwd_dq_smem_bytes(config, kernel_hdim), device_id)


def bwd_preprocess_function(dtype: str, device_id: int):
    return get_function("flash_bwd.cu", bwd_preprocess_kernel_name(dtype), 0, device_id)


def bwd_convert_dq_function(dtype: str, device_id: int):
    return get_function("flash_bwd.cu", bwd_convert_dq_kernel_name(dtype), 0, device_id)

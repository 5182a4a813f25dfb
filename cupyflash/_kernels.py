"""Turning (kernel family, kernel kind, tile config, variant) into a compiled, launchable CuPy function.

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


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


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


_lock = threading.Lock()
_functions: dict[tuple, object] = {}


def _announce(what: str, seconds: float) -> None:
    # Only real compiles are worth a line; a load from CuPy's disk cache takes milliseconds.
    if seconds > 0.25 and not os.environ.get("CUPYFLASH_QUIET"):
        print(f"cupyflash: compiled {what} in {seconds:.1f} s (cached on disk from now on)", file=sys.stderr)


def get_function(family, kind: str, config, kernel_hdim: int, variant, device_id: int, atomic_dq: bool = False):
    """Compile (once per device and process; CuPy caches the binary on disk) and return the kernel of ``kind``
    for this tile config and variant, with its dynamic shared-memory limit raised to what it needs."""
    key = (family.name, kind, config, kernel_hdim, variant, device_id, atomic_dq)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    import cupy

    name = family.kernel_name(kind, config, kernel_hdim, variant, atomic_dq)
    smem = 0 if config is None else family.smem_bytes(kind, config, kernel_hdim, variant)
    with _lock:
        fn = _functions.get(key)
        if fn is None:
            with cupy.cuda.Device(device_id):
                start = time.perf_counter()
                module = cupy.RawModule(code=load_source(family.sources[kind]), options=family.compile_options,
                                        name_expressions=(name,))
                fn = module.get_function(name)
                if smem > 48 * 1024:
                    fn.max_dynamic_shared_size_bytes = smem
                _announce(f"{name} for sm_{cupy.cuda.Device(device_id).compute_capability}",
                          time.perf_counter() - start)
            _functions[key] = fn
    return fn

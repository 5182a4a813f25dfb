"""Compiling kernel variants to cubin on a machine without a GPU, and reading ptxas's resource report.

Used by the CPU test suite (and ``python -m cupyflash._nvrtc``) to check that every variant the dispatcher can
choose compiles for sm_80 and sm_90 without register spills. Talks to libnvrtc directly through ctypes: CuPy's
own compiler path asks the driver for the device's architecture, which a GPU-less machine does not have.
"""
from __future__ import annotations

import ctypes
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ._kernels import (COMPILE_OPTIONS, bwd_convert_dq_kernel_name, bwd_dq_kernel_name, bwd_kernel_name,
                       bwd_preprocess_kernel_name, fwd_kernel_name, load_source)
from .configs import all_variants


class NvrtcUnavailable(RuntimeError):
    pass


def _libnvrtc():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        return ctypes.CDLL(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception as first:
        for name in ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"):
            try:
                return ctypes.CDLL(name)
            except OSError:
                pass
        raise NvrtcUnavailable(f"libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12): {first}") from None


@dataclass(frozen=True)
class Resources:
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int


_PROPS = re.compile(r"Function properties for (\S+)\s*\n\s*(?:ptxas\s*\.?)?\s*(\d+) bytes stack frame, (\d+) bytes spill "
                    r"stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Compiling entry function '(\S+)' for '\w+'\s*\n.*?Used (\d+) registers", re.S)


def parse_ptxas_report(log: str) -> dict[str, Resources]:
    """Mangled kernel name -> resources, from a `-Xptxas=-v` log."""
    props = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _PROPS.finditer(log)}
    regs = {}
    for block in log.split("Compiling entry function")[1:]:
        m = _REGS.search("Compiling entry function" + block)
        if m:
            regs[m[1]] = int(m[2])
    return {name: Resources(regs.get(name, -1), st, ld, frame) for name, (frame, st, ld) in props.items()}


def compile_report(source: str, names: list[str], arch: str) -> dict[str, Resources]:
    """Compile ``names`` (template instances of ``source``) to a cubin for ``arch`` (e.g. 'sm_90') in one NVRTC
    program; return each name's ptxas resources. Raises RuntimeError with the log on a compile error."""
    lib = _libnvrtc()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"cupyflash.cu", 0, None, None))
    try:
        for n in names:
            _check(lib, lib.nvrtcAddNameExpression(prog, n.encode()))
        opts = [o.encode() for o in (*COMPILE_OPTIONS, f"-arch={arch}", "-Xptxas=-v")]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if status != 0:
            raise RuntimeError(f"NVRTC failed for {arch}:\n{log}")
        report = parse_ptxas_report(log)
        out = {}
        for n in names:
            lowered = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)))
            out[n] = report[lowered.value.decode()]
        return out
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _check(lib, status):
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC error {status}: {lib.nvrtcGetErrorString(status).decode()}")


DTYPES = ("float16", "bfloat16")


def fwd_variant_names() -> list[str]:
    """Every forward template instance the dispatcher can select: configs x dtypes x causal."""
    return [fwd_kernel_name(config, kd, dtype, causal)
            for _family, kd, config in all_variants("fwd") for dtype in DTYPES for causal in (False, True)]


def bwd_variant_names() -> list[str]:
    """Every backward template instance: dK/dV kernels with and without atomic dQ, dQ kernels, preprocess and
    dQ conversion."""
    names = [bwd_kernel_name(config, kd, dtype, causal, atomic)
             for _family, kd, config in all_variants("bwd") for dtype in DTYPES for causal in (False, True)
             for atomic in (True, False)]
    names += [bwd_dq_kernel_name(config, kd, dtype, causal)
              for _family, kd, config in all_variants("bwd_dq") for dtype in DTYPES for causal in (False, True)]
    return names + [f(dtype) for dtype in DTYPES for f in (bwd_preprocess_kernel_name, bwd_convert_dq_kernel_name)]


SOURCES = {"flash_fwd.cu": fwd_variant_names, "flash_bwd.cu": bwd_variant_names}


def _compile_group(args):
    filename, names, arch = args
    return arch, compile_report(load_source(filename), names, arch)


def compile_all(archs=("sm_80", "sm_90"), jobs: int = 2, group_size: int = 16) -> dict[tuple[str, str], Resources]:
    """(arch, kernel name) -> resources for every kernel variant; groups of names share one NVRTC program,
    groups run in ``jobs`` processes."""
    groups = [(source, names[i:i + group_size], arch)
              for source, variant_names in SOURCES.items() for names in [variant_names()]
              for arch in archs for i in range(0, len(names), group_size)]
    results = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for arch, report in pool.map(_compile_group, groups):
            results.update({(arch, n): r for n, r in report.items()})
    return results


if __name__ == "__main__":
    import os
    import time

    start = time.perf_counter()
    res = compile_all(jobs=os.cpu_count() or 2)
    for (arch, name), r in sorted(res.items()):
        print(f"{arch} regs={r.registers:3d} spill={r.spill_stores}/{r.spill_loads} stack={r.stack_frame:4d}  {name}")
    bad = [k for k, r in res.items() if r.spill_stores or r.spill_loads]
    print(f"{len(res)} variants compiled in {time.perf_counter() - start:.0f} s; {len(bad)} spill", file=sys.stderr)
    sys.exit(1 if bad else 0)

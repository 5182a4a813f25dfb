"""Compiling kernel variants to cubin on a machine without a GPU, and reading ptxas's resource report.

Used by the CPU test suite (and ``python -m cupyflash._nvrtc``) to check that every variant the dispatcher can
choose compiles for sm_80 and sm_90 without register spills. Talks to libnvrtc directly through ctypes: CuPy's
own compiler path asks the driver for the device's architecture, which a GPU-less machine does not have.
"""
from __future__ import annotations

import ctypes
import itertools
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ._kernels import load_source
from .configs import DeviceLimits, NoConfigFits, all_variants, candidates, row_lengths, select_config
from .families import ALL_FAMILIES, BY_NAME, HELPER_KINDS, KINDS, MMA_SM80, TF32_STAGING_KINDS
from .problem import Variant, precisions_of


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


# C7508: setmaxnreg ignored; C7510-C7517: wgmma serialized ("Potential Performance Loss") or a wait injected
_WGMMA_WARNINGS = re.compile(r"\b(C7508|C751\d)\b")
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
        opts = [o.encode() for o in (*MMA_SM80.compile_options, f"-arch={arch}", "-Xptxas=-v")]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if status != 0:
            raise RuntimeError(f"NVRTC failed for {arch}:\n{log}")
        serialized = sorted(set(_WGMMA_WARNINGS.findall(log)))
        if serialized:  # the kernel runs, but setmaxnreg is ignored or the warpgroup products run one by one
            raise RuntimeError(f"ptxas warnings {', '.join(serialized)} for {arch} (hopper-notes.md):\n{log}")
        report = parse_ptxas_report(log)
        out = {}
        for n in names:
            lowered = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)))
            out[n] = report[lowered.value.decode()]
        return out
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def compile_ptx(source: str, arch: str = "compute_90") -> str:
    """PTX of ``source`` (extern "C" kernels), for reading constants the compiler folded."""
    lib = _libnvrtc()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"probe.cu", 0, None, None))
    try:
        opts = [o.encode() for o in (*MMA_SM80.compile_options, f"-arch={arch}")]
        if lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)) != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            raise RuntimeError(f"NVRTC failed:\n{buf.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, buf))
        return buf.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


_MOV = re.compile(r"mov\.u64\s+(%rd\d+),\s*(\d+);")
_STORE = re.compile(r"st\.global\.u64\s+\[%rd\d+(?:\+(\d+))?\],\s*(%rd\d+);")


def struct_layout(source: str, struct: str, members) -> tuple[int, dict]:
    """(sizeof, {member: offsetof}) of a C++ struct as the CUDA compiler lays it out: a probe kernel stores each
    offset, and the constants are read back from the PTX (NVRTC has no usable offsetof in constant expressions)."""
    stores = [f"out[{i}] = (const char*)&s.{m} - (const char*)&s;" for i, m in enumerate(members)]
    stores.append(f"out[{len(members)}] = sizeof({struct});")
    probe = (f'{source}\nextern "C" __global__ void layout_probe(const {struct} s, long long* out) {{\n'
             + "\n".join(stores) + "\n}\n")
    ptx = compile_ptx(probe)
    consts = dict(_MOV.findall(ptx))
    values = {int(off or 0) // 8: int(consts.get(reg, 0)) for off, reg in _STORE.findall(ptx)}
    if len(values) != len(members) + 1:
        raise RuntimeError(f"layout probe: expected {len(members) + 1} stores in the PTX, found {len(values)}")
    return values[len(members)], {m: values[i] for i, m in enumerate(members)}


def _check(lib, status):
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC error {status}: {lib.nvrtcGetErrorString(status).decode()}")


DTYPES = ("float16", "bfloat16")
#: Every score-modifier combination, with the band mask: each is compiled on every tile the dispatcher may pick for
#: it (register use is not monotonic in the modifiers: one combination can spill where a heavier one does not).
MODIFIED = tuple(Variant("bfloat16", "band", softcap=s, alibi=a)
                 for s, a in ((True, False), (False, True), (True, True)))
#: Packed variable-length rows: plain and with every modifier and dropout, band mask, on every tile of every kind.
PACKED = (Variant("bfloat16", "band", rows="packed"),
          Variant("float16", "band", True, True, rows="packed", dropout=True))
#: The covering set compiles each variant on the tile the dispatcher picks on a GPU of this size (an H100's limits):
#: the leading table entry, or the next that fits with a bias's tiles.
BIG_GPU = DeviceLimits(90, smem_per_block_optin=232448, smem_per_sm=233472, sm_count=132, name="H100-sized")
#: An additive bias: alone, and with every modifier and dbias (only the dK/dV kernel differs with dbias), band
#: mask, on every tile of every kind; a bias with a boolean mask (and dbias); the full sweep adds the other two
#: combinations of these with dbias, boolean masks alone and with softcap and ALiBi, a bias with a mask and
#: every modifier, and the dropout-free twins of the covering variants that carry dropout.
BIASED = (Variant("bfloat16", "band", bias="bfloat16"),
          Variant("float16", "band", True, True, bias="float32", dbias=True, dropout=True),
          Variant("bfloat16", "band", bias="bfloat16", dbias=True, bool_mask=True),
          Variant("bfloat16", "band", bias="bfloat16", dbias=True, bool_mask=True, mask_blocks=True))
BIASED_FULL_ONLY = (Variant("bfloat16", "band", bias="bfloat16", dbias=True),
                    Variant("float16", "band", True, True, bias="float32", dbias=True),
                    Variant("float16", "band", True, True, rows="packed"),
                    Variant("float32", "band", True, True, rows="packed", precision="tf32"),
                    Variant("float16", "band", True, True, bias="float32"),
                    Variant("bfloat16", "band", bool_mask=True), Variant("float16", "band", True, True, bool_mask=True),
                    Variant("bfloat16", "band", bias="bfloat16", bool_mask=True),
                    Variant("bfloat16", "band", bias="float32", dbias=True, bool_mask=True),
                    Variant("float16", "band", True, True, bias="float32", dbias=True, bool_mask=True))
#: float32 inputs (the mma_tf32 family): every modifier with packed rows and dropout ("tf32"), and with a float32
#: bias, dbias and a mask ("highest"), a 16-bit bias with a block-sparse mask ("tf32"), on the picked tiles.
FLOAT32 = (Variant("float32", "band", True, True, rows="packed", precision="tf32", dropout=True),
           Variant("float32", "band", True, True, bias="float32", dbias=True, bool_mask=True, precision="highest"),
           Variant("float32", "band", bias="bfloat16", dbias=True, bool_mask=True, mask_blocks=True,
                   precision="tf32"))
#: Each remaining policy value once per kernel kind and head dim (with the leading tile for it); split keys (the
#: forward's KeySplits) alone and with every modifier, a float32 bias and dropout.
SINGLE_POLICIES = (Variant("float16", "none", split_kv=True),
                   Variant("bfloat16", "band", True, True, bias="float32", dropout=True, split_kv=True),
                   Variant("float16", "none", softcap=True), Variant("float16", "none", alibi=True),
                   Variant("float16", "none", bias="float16"), Variant("float16", "none", bool_mask=True),
                   Variant("float16", "none", bool_mask=True, mask_blocks=True))


def _kernel_instances(kind: str, full: bool, limits: DeviceLimits, arch: str):
    """(source file, kernel name) of ``kind``'s covering set on the tiles the dispatcher picks for ``limits``, or
    with ``full`` of its full sweep (see kernel_instances), of the families compiled for ``arch``."""
    atomic_flags = (True, False) if kind == "bwd" else (False,)
    seen = set()
    for family_name, kd, config in all_variants(kind):
        fam = BY_NAME[family_name]
        if arch not in fam.archs:
            continue
        for atomic in atomic_flags:
            for variant in _plain_variants(fam, kind, kd, config, limits, full):
                seen.add((fam.sources[kind], fam.kernel_name(kind, config, kd, variant, atomic)))
    variants = MODIFIED + PACKED + BIASED + FLOAT32 + SINGLE_POLICIES + (BIASED_FULL_ONLY if full else ())
    for i, variant in enumerate(variants):
        every_tile = full and variant not in SINGLE_POLICIES
        # dK/dV with and without atomic dQ: plain scores take both, each variant one in turn (the full sweep both)
        flags = atomic_flags if full else atomic_flags[i % len(atomic_flags):][:1]
        used = {}  # (family, kd) -> the configs compiled: every one the variant may get, or the GPU's choice
        for family_name, kd, config in all_variants(kind, variant):
            fam = BY_NAME[family_name]
            if arch not in fam.archs or not fam.supports(limits.compute_capability, variant, kind, kd):
                continue
            if every_tile:
                used.setdefault((family_name, kd), []).append(config)
            elif (family_name, kd) not in used:
                try:
                    picked = select_config(kind, limits, kd, variant=variant)
                except NoConfigFits:  # none fits this arch's largest GPU: the call raises that, nothing to compile
                    picked = None
                # the pick may come from another family (compiled for its own arch)
                used[(family_name, kd)] = [picked] if picked is not None and picked.family == family_name else []
        for (family_name, kd), configs in used.items():
            fam = BY_NAME[family_name]
            for config, atomic in itertools.product(configs, flags):
                seen.add((fam.sources[kind], fam.kernel_name(kind, config, kd, variant, atomic)))
    return sorted(seen)


def _plain_variants(family, kind, kd, config, limits, full=False):
    """Plain scores on a tile, each policy value once (a covering set, not the product): float16 unmasked and
    bfloat16 with the band mask; float32, whose three-pass kernels compile several times as long, one of them:
    precision "highest" unmasked on the tile the arch's GPU picks for it, "tf32" (or, on a tile that serves only
    "highest", "highest") with the band mask on the others.
    A tile its arch's GPU does not pick compiles for sm_90 only (each tile compiles at least once; CI's time).
    The other policies come with the variant lists (MODIFIED, ..., FLOAT32). ``full``: every dtype, precision and
    mask on every tile."""
    for dtype in family.dtypes:
        if full:
            yield from (Variant(dtype, mask, precision=p) for mask in ("none", "band") for p in precisions_of(dtype))
            continue
        if dtype == "float32":
            variant = Variant(dtype, "none", precision="highest")
        else:
            variant = Variant(dtype, "none" if dtype == "float16" else "band")
        try:
            picked = select_config(kind, limits, kd, variant=variant) == config
        except NoConfigFits:  # none fits this arch's largest GPU (A100, float32 head dim 256 backward)
            picked = False
        if picked:
            yield variant
        elif limits.compute_capability >= 90 and dtype != "float32":
            yield variant
        elif limits.compute_capability >= 90:  # a float32 tile may serve one precision: the first it takes
            masked = [Variant(dtype, "band", precision=p) for p in ("tf32", "highest")]
            yield next((v for v in masked if config in candidates(kind, limits, kd, v)), masked[0])


def kernel_instances(full: bool = False, arch: str = "sm_90"):
    """The kernel instances the CPU compile check builds for ``arch``. Always: for each tile config of every kind,
    plain scores in each dtype, float32 precision and mask (each value once per tile: _plain_variants; dK/dV with
    and without atomic dQ), and the helper kernels in both row layouts. The covering set (CI) adds each
    score-modifier combination, packed rows, biases of each dtype, float32's policies (FLOAT32), and each modifier
    alone in float16 unmasked, on the tile the arch's largest GPU (ARCH_GPUS) gets for each kind and head dim
    (dK/dV: with atomic dQ or without, the variants in turn): each arch compiles what its dispatcher picks, so a
    table condition for one arch (When avoid "sm80+...") is checked where it applies.
    ``full`` (``python -m cupyflash._nvrtc``, run before committing a kernel change) puts them on every tile the
    dispatcher may give them: register use is not monotonic in the variants, and a combination can spill where a
    heavier one does not."""
    out = [inst for kind in KINDS for inst in _kernel_instances(kind, full, ARCH_GPUS[arch], arch)]
    out += [(fam.sources[kind], fam.kernel_name(kind, None, 0, Variant(dtype, rows=rows, precision=p)))
            for fam in ALL_FAMILIES if arch in fam.archs for kind in HELPER_KINDS + TF32_STAGING_KINDS
            if kind in fam.kinds
            for dtype in fam.dtypes for p in precisions_of(dtype) for rows in ("dense", "packed")]
    return list(dict.fromkeys(out))  # copy_rows has no row layout: one instance per dtype


#: The largest GPU of each architecture, for picks(): the dispatcher's choice there is what that arch runs most.
ARCH_GPUS = {"sm_90": BIG_GPU, "sm_90a": BIG_GPU,
             "sm_80": DeviceLimits(80, smem_per_block_optin=166912, smem_per_sm=167936, sm_count=108,
                                   name="A100-sized")}


def picks(arch: str, dtypes=("bfloat16",), biases=("none", "bfloat16", "float32"), dropouts=(False,)):
    """Every variant combination (mask, softcap, ALiBi, row layout, bias dtype with and without dbias, boolean
    mask) on the tile the dispatcher picks for it on ``arch``'s largest GPU, every kind and head dim, for long
    rows and each row limit of the table (configs.row_lengths). Register use
    is not monotonic in the variants, so this finds spills the covering sets miss (it found a float32 bias with a
    mask spilling where a heavier variant does not); about 20 minutes per arch on 2 cores. ``dropouts``: (True,)
    sweeps the same combinations with dropout."""
    from .configs import KERNEL_HEAD_DIMS
    from .problem import variant_combinations

    limits, out = ARCH_GPUS[arch], set()
    for kind, kd in itertools.product(KINDS, KERNEL_HEAD_DIMS):
        for variant, seqlen_q in itertools.product(variant_combinations(kind, dtypes, biases, dropouts),
                                                   row_lengths(kind)):
            try:
                config = select_config(kind, limits, kd, variant=variant, seqlen_q=seqlen_q)
            except NoConfigFits:  # the call raises that: nothing to compile
                continue
            fam = BY_NAME[config.family]
            if arch not in fam.archs:  # picked from a family compiled for another arch (sm_90a beside sm_90)
                continue
            for atomic in (True, False) if kind == "bwd" else (False,):
                out.add((fam.sources[kind], fam.kernel_name(kind, config, kd, variant, atomic)))
    return sorted(out)


def _compile_group(args):
    filename, names, arch = args
    return arch, compile_report(load_source(filename), names, arch)


#: The most shared memory a block can have on any GPU of an architecture (A100: 163 KB, H100: 227 KB).
ARCH_SMEM = {"sm_80": 166912, "sm_90": 232448, "sm_90a": 232448}
_SMEM_ARG = re.compile(r", (\d+)>$")  # the tile kernels' last template argument: their shared memory


def runs_on(name: str, arch: str) -> bool:
    """Whether a kernel instance can launch on some GPU of ``arch``: one that needs more shared memory than its
    largest gives a block is never chosen there, so it is not compiled for it."""
    m = _SMEM_ARG.search(name)
    return m is None or int(m[1]) <= ARCH_SMEM.get(arch, 0)


def compile_all(archs=("sm_80", "sm_90", "sm_90a"), jobs: int = 2, group_size: int = 16,
                instances=None) -> dict[tuple[str, str], Resources]:
    """(arch, kernel name) -> resources for every kernel instance (default: each arch's kernel_instances(arch=))
    on every arch it can run on (runs_on); groups of names share one NVRTC program, groups run in ``jobs``
    processes."""
    groups = []
    for arch in archs:
        by_source = {}
        for source, name in instances if instances is not None else kernel_instances(arch=arch):
            by_source.setdefault(source, []).append(name)
        for source, names in by_source.items():
            fitting = [n for n in names if runs_on(n, arch)]
            groups += [(source, fitting[i:i + group_size], arch) for i in range(0, len(fitting), group_size)]
    results = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for arch, report in pool.map(_compile_group, groups):
            results.update({(arch, n): r for n, r in report.items()})
    return results


if __name__ == "__main__":
    # python -m cupyflash._nvrtc: the full sweep (every tile each covered variant may get);
    # python -m cupyflash._nvrtc --picks sm_90|sm_80 [--dropout]: every variant combination on that arch's
    # dispatcher picks (with dropout: the same combinations with dropout on).
    import os
    import time

    start = time.perf_counter()
    jobs = os.cpu_count() or 2
    if "--picks" in sys.argv:
        arch = sys.argv[sys.argv.index("--picks") + 1]
        dropouts = (True,) if "--dropout" in sys.argv else (False,)
        res = compile_all(archs=(arch,), jobs=jobs, instances=picks(arch, dropouts=dropouts))
    else:
        res = {k: r for arch in ("sm_80", "sm_90", "sm_90a")
               for k, r in compile_all(archs=(arch,), jobs=jobs, instances=kernel_instances(True, arch)).items()}
    for (arch, name), r in sorted(res.items()):
        print(f"{arch} regs={r.registers:3d} spill={r.spill_stores}/{r.spill_loads} stack={r.stack_frame:4d}  {name}")
    bad = [k for k, r in res.items() if r.spill_stores or r.spill_loads]
    print(f"{len(res)} variants compiled in {time.perf_counter() - start:.0f} s; {len(bad)} spill", file=sys.stderr)
    sys.exit(1 if bad else 0)

"""The kernels compile with NVRTC for sm_80, sm_90 and (the wgmma family) sm_90a, with the run-time options, without register spills or stack
(read off ptxas's report). Runs on CPU-only machines; in CI a missing NVRTC fails instead of skipping.

What is compiled is a covering set (``_nvrtc.kernel_instances``), not the full product of tiles and variants: every
plain kernel the dispatcher can pick, and every variant policy value on the tile each arch's largest GPU picks for
each kind and head dim (each arch its own picks).
Its coverage is checked here against what the dispatcher itself picks. Every variant on every tile it may get is
the full sweep, ``python -m cupyflash._nvrtc`` (about 14 minutes on 2 cores), run before committing a kernel change;
its coverage is checked here too, without compiling.
"""
import itertools
import os
import re

import pytest

from conftest import require_nvrtc
from cupyflash import _nvrtc
from cupyflash.configs import KERNEL_HEAD_DIMS, DeviceLimits, candidates, family_for, select_config
from cupyflash.families import BY_NAME, KINDS
from cupyflash.problem import MASKS, Variant

ARCHS = ("sm_80", "sm_90", "sm_90a")
#: The code each GPU runs: an H100's dispatcher picks sm_90 kernels and (the wgmma family's) sm_90a ones.
GPU_ARCHS = {"sm_90": ("sm_90", "sm_90a"), "sm_80": ("sm_80",)}
INSTANCES = {arch: _nvrtc.kernel_instances(arch=arch) for arch in ARCHS}  # each arch compiles its own picks
NAMES = sorted({name for instances in INSTANCES.values() for _source, name in instances})
FULL_NAMES = [name for arch in ("sm_90", "sm_90a") for _source, name in _nvrtc.kernel_instances(full=True, arch=arch)]
H100 = DeviceLimits(90, smem_per_block_optin=232448, smem_per_sm=233472, sm_count=132, name="H100")
A100 = DeviceLimits(80, smem_per_block_optin=166912, smem_per_sm=167936, sm_count=108, name="A100")
SM86 = DeviceLimits(86, smem_per_block_optin=101376, smem_per_sm=102400, sm_count=84, name="sm_86")


@pytest.fixture(scope="module")
def reports():
    require_nvrtc("the NVRTC compile check")
    return _nvrtc.compile_all(ARCHS, jobs=max(2, os.cpu_count() or 2))


def _names(kind, limits, head_dim, variant, every_fitting):
    configs = candidates(kind, limits, head_dim, variant) if every_fitting else [
        select_config(kind, limits, head_dim, variant=variant)]
    atomic = (True, False) if kind == "bwd" else (False,)
    return [BY_NAME[c.family].kernel_name(kind, c, head_dim, variant, a) for c in configs for a in atomic]


@pytest.mark.parametrize("limits", [H100, A100, SM86], ids=lambda l: l.name)
@pytest.mark.parametrize("kind", KINDS)
def test_every_plain_kernel_the_dispatcher_can_pick_is_compiled(limits, kind):
    """Plain scores, 16-bit: every fitting tile, in each dtype and with and without the band mask (causal), each
    value on every tile once (float16 unmasked, bfloat16 masked: _nvrtc._plain_variants); the full sweep
    (FULL_NAMES) has every combination."""
    compiled, full = set(NAMES), set(FULL_NAMES)
    for kd, dtype, mask in itertools.product(KERNEL_HEAD_DIMS, ("float16", "bfloat16"), MASKS):
        for name in _names(kind, limits, kd, Variant(dtype, mask), every_fitting=True):
            assert name in full, name
            if (dtype, mask) in (("float16", "none"), ("bfloat16", "band")):
                assert name in compiled, name


@pytest.mark.parametrize("limits", [H100, A100, SM86], ids=lambda l: l.name)
@pytest.mark.parametrize("kind", KINDS)
def test_every_float32_tile_is_compiled_at_some_precision(limits, kind):
    """float32 (the mma_tf32 and wgmma_tf32 families): every fitting tile, plain scores, in one precision or the
    other (each float32 kernel compiles three times as long as a 16-bit one; _nvrtc._plain_variants takes them in
    turn), named by the tile's own family, and in a precision the tile's table entry takes (a tile that serves only
    "highest", compiled at "tf32", would leave its own code unchecked)."""
    compiled = set(NAMES)
    for kd in KERNEL_HEAD_DIMS:
        variants = [Variant("float32", mask, precision=p) for mask, p in itertools.product(MASKS, ("highest", "tf32"))]
        tiles = {c for v in variants for c in candidates(kind, limits, kd, v)}
        for c in tiles:
            names = {BY_NAME[c.family].kernel_name(kind, c, kd, v, a) for v in variants for a in (True, False)
                     if c in candidates(kind, limits, kd, v)}
            assert names & compiled, (kind, kd, str(c))


@pytest.mark.parametrize("limits", [H100, A100, SM86], ids=lambda l: l.name)
@pytest.mark.parametrize("kind", KINDS)
def test_the_full_sweep_has_every_tile_each_variant_may_use(limits, kind):
    swept = set(FULL_NAMES)
    variants = _nvrtc.MODIFIED + _nvrtc.PACKED + _nvrtc.BIASED + _nvrtc.BIASED_FULL_ONLY
    for kd, variant in itertools.product(KERNEL_HEAD_DIMS, variants):
        for name in _names(kind, limits, kd, variant, every_fitting=True):
            assert name in swept, name


@pytest.mark.parametrize("arch, limits", [("sm_90", H100), ("sm_80", A100)], ids=["sm_90", "sm_80"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_covering_set_has_each_variant_on_the_dispatchers_tile_of_each_arch(kind, arch, limits):
    """Each variant on its tile; the dK/dV kernel with atomic dQ or without (the variants take them in turn), both
    values at every head dim."""
    compiled = {name for a in GPU_ARCHS[arch] for _source, name in INSTANCES[a]}
    for kd in KERNEL_HEAD_DIMS:
        flags = set()
        for variant in _nvrtc.MODIFIED + _nvrtc.PACKED + _nvrtc.BIASED:
            names = _names(kind, limits, kd, variant, every_fitting=False)
            assert any(name in compiled for name in names), names
            if kind == "bwd":
                flags |= {re.search(r", (true|false), \d+, [\w:]+, \d+>$", n)[1] for n in names if n in compiled}
        assert kind != "bwd" or flags == {"true", "false"}, (kd, flags)


@pytest.mark.parametrize("kind", KINDS)
def test_each_policy_value_is_compiled_once_per_kind_and_head_dim(kind):
    """Mask none/band, softcap off/on, ALiBi off/on, each bias dtype (and dbias in the dK/dV kernel): each appears
    in a compiled instance of every head dim."""
    for kd in KERNEL_HEAD_DIMS:
        ours = [n for n in NAMES if n.startswith(f"cf::flash_{'bwd_dkdv' if kind == 'bwd' else kind}_kernel<")
                and n[n.index("<") + 1:].split(", ")[1] == str(kd)]
        biases = ("cf::NoBias", "cf::TileBias<cf::f16>", "cf::TileBias<cf::bf16>", "cf::TileBias<cf::mask8>",
                  "cf::TileBias<float, true>" if kind == "bwd" else "cf::TileBias<float>", "cf::MaskedBias<",
                  "cf::BlockMask")
        for fragment in ("cf::NoMask", "cf::BandMask", "ScoreMod<true,", "ScoreMod<false,", ", true>,",
                         ", false>,", "cf::f16", "cf::bf16") + biases:
            assert any(fragment in n for n in ours), (kind, kd, fragment)


@pytest.mark.parametrize("arch, name", [(arch, name) for arch in ARCHS for _source, name in INSTANCES[arch]
                                        if _nvrtc.runs_on(name, arch)])
def test_compiles_without_spills(reports, arch, name):
    r = reports[(arch, name)]
    assert r.registers > 0, "ptxas report not parsed"
    assert (r.spill_stores, r.spill_loads) == (0, 0), f"{name} spills on {arch}: {r}"
    assert r.stack_frame == 0, f"{name} uses {r.stack_frame} bytes of local memory on {arch}"


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_picks_cover_every_variant_on_the_dispatchers_tile(arch):
    """python -m cupyflash._nvrtc --picks ARCH: each combination on its pick, a float32 bias with a mask included,
    no bias or mask with packed rows."""
    names = [name for a in GPU_ARCHS[arch] for _, name in _nvrtc.picks(a)]
    limits = _nvrtc.ARCH_GPUS[arch]
    both = Variant("bfloat16", "band", True, True, bias="float32", dbias=True, bool_mask=True)
    for kind in KINDS:
        for name in _names(kind, limits, 64, both, every_fitting=False):
            assert name in names, name
    assert not any("PackedRows" in n and ("Bias<" in n) for n in names)


def test_compile_options_match_the_run_time_ones():
    """CuPy adds -ftz=true when it compiles; the check must see what runs."""
    assert "-ftz=true" in family_for(H100).compile_options


def test_instances_too_big_for_an_arch_are_not_compiled_for_it():
    big = "cf::flash_bwd_dkdv_kernel<cf::f16, 64, 128, 128, 8, 2, 1, cf::NoMask, cf::ScoreMod<false, false>, " \
          "cf::TileBias<cf::mask8>, cf::DenseRows, cf::NoDropout, true, 2, cf::WarpMma, 219136>"
    assert _nvrtc.runs_on(big, "sm_90") and not _nvrtc.runs_on(big, "sm_80")
    assert _nvrtc.runs_on("cf::flash_copy_rows_kernel<cf::f16>", "sm_80")


def test_report_parser_sees_spills():
    log = ("ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\n"
           "ptxas info    : Function properties for _Z1kv\n"
           "    16 bytes stack frame, 48 bytes spill stores, 32 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size\n")
    assert _nvrtc.parse_ptxas_report(log)["_Z1kv"] == _nvrtc.Resources(255, 48, 32, 16)


def test_a_compile_error_is_reported():
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        _nvrtc.compile_report("__global__ void k() { undefined_thing(); }", [], "sm_90")

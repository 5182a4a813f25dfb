"""Every forward variant the dispatcher can choose compiles with NVRTC for sm_80 and sm_90, with no register
spills (read off ptxas's report). Runs on CPU-only machines; in CI a missing NVRTC fails instead of skipping."""
import os

import pytest

from conftest import IN_CI
from cupyflash import _nvrtc

ARCHS = ("sm_80", "sm_90")
NAMES = _nvrtc.fwd_variant_names() + _nvrtc.bwd_variant_names()


@pytest.fixture(scope="module")
def reports():
    try:
        _nvrtc._libnvrtc()
    except _nvrtc.NvrtcUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI must run the NVRTC compile check: {exc}")
        pytest.skip(str(exc))
    return _nvrtc.compile_all(ARCHS, jobs=max(2, os.cpu_count() or 2))


@pytest.mark.parametrize("kernel", ["flash_fwd_kernel", "flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel"])
def test_every_dtype_causal_and_head_dim_is_covered(kernel):
    for tag in ("cf::f16", "cf::bf16"):
        for hd in (32, 64, 96, 128, 160, 192, 224, 256):
            for causal in ("true", "false"):
                assert any(n.startswith(f"cf::{kernel}<{tag}, {hd},") and f", {causal}" in n for n in NAMES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", NAMES)
def test_compiles_without_spills(reports, arch, name):
    r = reports[(arch, name)]
    assert r.registers > 0, "ptxas report not parsed"
    assert (r.spill_stores, r.spill_loads) == (0, 0), f"{name} spills on {arch}: {r}"
    assert r.stack_frame == 0, f"{name} uses {r.stack_frame} bytes of local memory on {arch}"


def test_report_parser_sees_spills():
    log = ("ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\n"
           "ptxas info    : Function properties for _Z1kv\n"
           "    16 bytes stack frame, 48 bytes spill stores, 32 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size\n")
    assert _nvrtc.parse_ptxas_report(log)["_Z1kv"] == _nvrtc.Resources(255, 48, 32, 16)


def test_a_compile_error_is_reported():
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        _nvrtc.compile_report("__global__ void k() { undefined_thing(); }", [], "sm_90")

"""Shared fixtures: GPU availability (GPU tests skip with the reason) and NaN-poisoned outputs."""
import os

import pytest

from cupyflash._device import no_gpu_reason

GPU_SKIP_REASON = no_gpu_reason()
requires_gpu = pytest.mark.skipif(GPU_SKIP_REASON is not None, reason=f"GPU test: {GPU_SKIP_REASON}")
IN_CI = bool(os.environ.get("CI"))


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every output the library allocates starts as NaN, so an element a kernel never writes fails the test."""
    from cupyflash import _launch

    monkeypatch.setattr(_launch, "poison_outputs", True)


def cases_or_skip(cases, ids, why: str, arity: int):
    """Parametrize values: ``cases`` (tuples of ``arity``) with ``ids``, or, where there are none, one case skipped
    with ``why`` (pytest's own report of an empty list, "got empty parameter set", does not say why)."""
    if cases:
        return [pytest.param(*case, id=case_id) for case, case_id in zip(cases, ids)]
    return [pytest.param(*[None] * arity, marks=pytest.mark.skip(reason=why), id="none")]


def require_nvrtc(what: str) -> None:
    """Skip when NVRTC cannot be loaded, except in CI, where the compile checks must run: fail there."""
    from cupyflash import _nvrtc

    try:
        _nvrtc._libnvrtc()
    except _nvrtc.NvrtcUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI must run {what}: {exc}")
        pytest.skip(str(exc))


def library_skip_reason(name: str):
    """Why GPU tests that need ``name`` (torch) with a usable CUDA device skip, or None. Imports it only when it is
    installed and a GPU is visible, so that runs without it stay fast."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed"
    if GPU_SKIP_REASON is not None:
        return f"GPU test: {GPU_SKIP_REASON}"
    if name == "torch":
        import torch

        if not torch.cuda.is_available():
            return "torch sees no CUDA device (a CPU-only build?)"
    return None


@pytest.fixture
def default_generator_restored():
    """Tests that draw from or re-seed cupyflash's default dropout generator leave it as they found it."""
    from cupyflash import default_generator

    saved = default_generator.seed, default_generator.offset
    yield default_generator
    default_generator.seed, default_generator.offset = saved

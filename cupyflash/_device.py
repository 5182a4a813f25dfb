"""Reading a GPU's limits once per device, and saying in one line why there is no GPU to read."""
from __future__ import annotations

import functools

from .configs import DeviceLimits


def no_gpu_reason() -> str | None:
    """None when CuPy sees a CUDA device; otherwise why not, in one line (the GPU tests' skip reason too)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
        return "no CUDA device visible"
    except Exception as exc:  # CuPy not installed, no driver or libcuda, a driver older than CuPy's runtime
        return f"no usable CUDA GPU ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


@functools.lru_cache(maxsize=None)
def device_limits(device_id: int) -> DeviceLimits:
    import cupy

    dev = cupy.cuda.Device(device_id)
    attrs = dev.attributes
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    return DeviceLimits(
        compute_capability=int(dev.compute_capability),
        smem_per_block_optin=int(attrs["MaxSharedMemoryPerBlockOptin"]),
        smem_per_sm=int(attrs["MaxSharedMemoryPerMultiprocessor"]),
        sm_count=int(attrs["MultiProcessorCount"]),
        name=props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
    )

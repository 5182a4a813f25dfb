"""Reading a GPU's limits once per device."""
from __future__ import annotations

import functools

from .configs import DeviceLimits


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

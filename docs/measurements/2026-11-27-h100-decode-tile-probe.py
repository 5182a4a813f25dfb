"""Probe for the decode tiles (sixteenth session: run with a 64-row entry at head dims 64 and 128; 64's landed):
K/V read bandwidth of decode-shaped forwards (bench.DECODE_SHAPES, one query row) on the dispatcher's pick beside
the long rows' leading tile forced, and cuDNN, in one process; bf16, head dims 64 and 128. GB/s = bytes of K and V
/ median time. From the checkout root, after `pip install --no-deps --no-build-isolation -e .`:
    timeout 300 python docs/measurements/2026-11-27-h100-decode-tile-probe.py"""
import torch
import torch.nn.functional as F

import cupy as cp
import cupyflash as cf
from cupyflash.bench import DECODE_SHAPES, time_fn
from cupyflash.configs import select_config
from cupyflash.forward import plan_for
from cupyflash._device import device_limits

limits = device_limits(0)
for d in (64, 128):
    long_tile = select_config("fwd", limits, d)  # the tile the dispatcher picks without the row limit
    for batch, nheads, keys in DECODE_SHAPES:
        q, k, v = (torch.randn(batch, s, nheads, d, device="cuda", dtype=torch.bfloat16) for s in (1, keys, keys))
        qc, kc, vc = (cp.from_dlpack(x) for x in (q, k, v))
        kv = 2 * k.numel() * 2
        picked = plan_for(qc, kc, vc)
        forced = plan_for(qc, kc, vc, config=long_tile)
        a = cf.flash_attn_func(qc, kc, vc)
        b = cf.flash_attn_func(qc, kc, vc, config=long_tile)
        diff = float(cp.abs(a.astype(cp.float32) - b.astype(cp.float32)).max())
        t_pick = time_fn(lambda: cf.flash_attn_func(qc, kc, vc))
        t_long = time_fn(lambda: cf.flash_attn_func(qc, kc, vc, config=long_tile))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            t_ref = time_fn(lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))), "torch")
        print(f"d{d} {batch} x {nheads} x {keys}: {picked.config} ({picked.splits} splits) {kv / t_pick / 1e6:6.0f}"
              f" | {forced.config} ({forced.splits}) {kv / t_long / 1e6:6.0f} | cuDNN {kv / t_ref / 1e6:6.0f} GB/s"
              f" (max |diff| {diff:.1e})", flush=True)
        del q, k, v, qc, kc, vc
        torch.cuda.empty_cache()
        cp.get_default_memory_pool().free_all_blocks()

"""Persistent blocks against the same tile launched one block a query tile, on an H100: each wgmma head dim's
leading tile beside the same tile with persistent blocks ("r", the last entry of each list in configs.FWD_TABLE),
cuDNN in the same process; bf16, 16k tokens, hidden 2048, TFLOP/s non-causal | causal, and the two tiles' largest
difference in the output. Results: 2026-11-27-h100-persistent-probe.md. From the checkout root, after
`pip install --no-deps --no-build-isolation -e .`:
    timeout 300 python docs/measurements/2026-11-27-h100-persistent-probe.py
(timeout: a pipeline mistake hangs rather than fails)."""
import dataclasses

import cupy as cp
import torch
import torch.nn.functional as F

import cupyflash as cf
from cupyflash.bench import time_fn
from cupyflash.configs import FWD_TABLE, _entry_config

for kd in (64, 128, 192, 256):
    entries = [_entry_config(e) for e in FWD_TABLE[("wgmma_sm90", kd)] if not getattr(e, "max_seqlen_q", 0)]
    lead, persistent = entries[0], entries[-1]
    assert persistent.persistent and dataclasses.replace(persistent, persistent=False) == lead, (lead, persistent)
    for S in (2048, 4096, 8192, 16384):
        B, H = 16384 // S, 2048 // kd
        q, k, v = (torch.randn(B, S, H, kd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qc, kc, vc = (cp.from_dlpack(x) for x in (q, k, v))
        cells = []
        for causal in (False, True):
            flops = 4 * B * H * S * S * kd / (2 if causal else 1)
            outs = [cf.flash_attn_func(qc, kc, vc, causal=causal, config=c) for c in (lead, persistent)]
            err = float(cp.abs(outs[0].astype(cp.float32) - outs[1].astype(cp.float32)).max())
            times = [time_fn(lambda c=c: cf.flash_attn_func(qc, kc, vc, causal=causal, config=c))
                     for c in (lead, persistent)]
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                ref = time_fn(lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                                                     is_causal=causal), "torch")
            cells.append(" / ".join(f"{flops / t / 1e9:6.1f}" for t in (*times, ref)) + f" (max |diff| {err:.1e})")
        print(f"d{kd} S{S} {lead} vs persistent vs cuDNN: " + " | ".join(cells), flush=True)

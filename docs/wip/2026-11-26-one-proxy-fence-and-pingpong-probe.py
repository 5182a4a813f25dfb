"""Probe for docs/wip/2026-11-26-one-proxy-fence-and-pingpong.patch, applied, on an H100: forward TFLOP/s of
the producer tiles with one proxy fence a step, and with pingpong turns (kernel names patched: no table entry
uses them), beside cuDNN. bf16, 16k tokens, hidden 2048. From the checkout root:
PYTHONPATH=$PWD python docs/wip/2026-11-26-one-proxy-fence-and-pingpong-probe.py"""
import cupy as cp
import torch
import torch.nn.functional as F

import cupyflash as cf
from cupyflash import families, forward
from cupyflash.bench import time_fn
from cupyflash.configs import _w

forward.check_config = lambda *a, **k: None  # forced configs outside the table
_name = families.Wgmma90Family.kernel_name
PINGPONG = set()


def kernel_name(self, kind, config, kd, variant, atomic_dq=False):
    n = _name(self, kind, config, kd, variant, atomic_dq)
    if (kd, config.block_n) in PINGPONG and config.overlap:
        n = n.replace("cf::ProducerWarpgroup<true>", "cf::ProducerWarpgroup<true, 40, 2, true>")
    return n


families.Wgmma90Family.kernel_name = kernel_name
P, O = dict(producer=True), dict(producer=True, overlap=True)
CASES = [(64, _w(128, 192, **P), False), (64, _w(128, 192, **O), True),
         (128, _w(128, 128, **O), False), (128, _w(128, 128, **O), True), (128, _w(128, 176, **O), True),
         (192, _w(128, 64, **P), False), (192, _w(128, 96, **P), False),
         (256, _w(128, 80, **P), False), (256, _w(128, 64, **O), True)]
for kd, cfg, pingpong in CASES:
    PINGPONG.clear()
    forward._PLANS = type(forward._PLANS)()
    if pingpong:
        PINGPONG.add((kd, cfg.block_n))
    for S in (2048, 8192):
        B, H = 16384 // S, 2048 // kd
        q, k, v = (torch.randn(B, S, H, kd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qc, kc, vc = (cp.from_dlpack(x) for x in (q, k, v))
        row = []
        for causal in (False, True):
            flops = 4 * B * H * S * S * kd / (2 if causal else 1)
            ms = time_fn(lambda: cf.flash_attn_func(qc, kc, vc, causal=causal, config=cfg), "cupy")
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                ref = time_fn(lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                                                     is_causal=causal), "torch")
            row.append(f"{flops / ms / 1e9:6.1f} (cuDNN {flops / ref / 1e9:6.1f})")
        print(f"d{kd} S{S} {cfg}{' pingpong' if pingpong else ''}: {' | '.join(row)}", flush=True)

"""Probe for issue 10's short causal rows (head dim 64 causal: 0.82x cuDNN at 2k, 0.90x at 4k, in every run): how
much of a block's time does not scale with its key tiles? Non-causal forward, a grid of exactly `waves` x 132
blocks (query tiles x heads), every block the same number n of key tiles: time = waves x (X + n c) if each SM
holds one block at a time. A least-squares line through n = 2 ... 32 gives X (fixed cost a block: launch, barrier
setup, Q and first K latency, output store) and c (cost a key tile), for the dispatcher's lead and, where the
table has one, the same tile with persistent blocks. Expected from the sixteenth session's tables (a model, not a
measurement): X about 5 us at head dim 64 (192x128), about a fifth of a 2k causal block. From the checkout root,
after `pip install --no-deps --no-build-isolation -e .`:
    timeout 300 python docs/measurements/2026-11-27-block-cost-probe.py
Result (H100, seventeenth session): docs/measurements/2026-11-27-h100-s17-fwd-ab.md, last section."""
import dataclasses

import numpy as np

import cupyflash as cf
from cupyflash._device import device_limits
from cupyflash.bench import make_inputs, time_fn
from cupyflash.configs import FWD_TABLE, _entry_config, select_config

limits = device_limits(0)
WAVES = 4
for kd in (64, 128):
    lead = select_config("fwd", limits, kd)
    entries = [_entry_config(e) for e in FWD_TABLE[("wgmma_sm90", kd)]]
    persistent = dataclasses.replace(lead, persistent=True)
    tiles = [lead] + ([persistent] if persistent in entries else [])
    q_tiles, heads = 4, WAVES * limits.sm_count // 4  # 4 query tiles a head: every block of a wave alike
    for config in tiles:
        ns, times = [], []
        q = make_inputs(1, q_tiles * config.block_m, heads, kd, "bfloat16")[0]
        for n in (2, 4, 8, 16, 32):
            _, k, v = make_inputs(1, n * config.block_n, heads, kd, "bfloat16")
            t = time_fn(lambda: cf.flash_attn_func(q, k, v, config=config))
            ns.append(n)
            times.append(t * 1e3 / WAVES)  # microseconds a wave
        c, x = np.polyfit(ns, times, 1)
        cells = " ".join(f"n={n}: {t:.1f}" for n, t in zip(ns, times))
        print(f"d{kd} {config}: us a wave {cells} | fit X = {x:.2f} us, c = {c:.3f} us a key tile", flush=True)

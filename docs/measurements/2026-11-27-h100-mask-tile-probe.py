"""Raw boolean masks on every wgmma forward tile that takes them (forced), bf16, 16k tokens, hidden 2048: half of
the 128x128 blocks empty, a dense random mask, all visible; median ms and time / plain (the dispatcher's plain
pick), and the largest difference from the dispatcher's masked output. Results: 2026-11-27-h100-s16-probes.md.
From the checkout root, after `pip install --no-deps --no-build-isolation -e .`:
    timeout 400 python docs/measurements/2026-11-27-h100-mask-tile-probe.py"""
import cupy
import cupyflash as cf
from cupyflash._device import device_limits
from cupyflash.bench import make_inputs, time_fn, _half_empty_blocks
from cupyflash.configs import candidates
from cupyflash.problem import Variant
limits = device_limits(0)
for d in (64, 128):
    v = Variant("bfloat16", bool_mask=True)
    tiles = [c for c in candidates("fwd", limits, d, v) if c.family == "wgmma_sm90"]
    for s in (2048, 8192):
        batch, nheads = 16384 // s, 2048 // d
        q, k, vv = make_inputs(batch, s, nheads, d, "bfloat16")
        plain = time_fn(lambda: cf.flash_attn_func(q, k, vv))
        masks = {"half": _half_empty_blocks(batch, s),
                 "dense": cupy.random.RandomState(1).random_sample((batch, 1, s, s), dtype=cupy.float32) < 0.5,
                 "all": cupy.ones((batch, 1, s, s), bool)}
        ref = {n: cf.flash_attn_func(q, k, vv, mask=m) for n, m in masks.items()}
        for c in tiles:
            cells = []
            for n, m in masks.items():
                out = cf.flash_attn_func(q, k, vv, mask=m, config=c)
                err = float(cupy.abs(out.astype(cupy.float32) - ref[n].astype(cupy.float32)).max())
                t = time_fn(lambda: cf.flash_attn_func(q, k, vv, mask=m, config=c))
                cells.append(f"{n} {t:.3f} ms {t / plain:.2f}x (diff {err:.0e})")
            print(f"d{d} S{s} {c}: " + " | ".join(cells), flush=True)

"""Issue 9 ("highest" at head dim 128, 1.56-1.69x of 2x SDPA): the forward's one consumer warpgroup overlapping its
softmax with its own products (thirtieth session, compile-checked, not yet run). The pick, wgmma_tf32 64x32 with a
cp.async producer that splits K and V^T ("p4"), waits for S = Q K^T and for P V in place; Nsight Compute put 31% of
its consumer's samples there (twenty-eighth session). The new candidate ("p4o", flash_fwd.cu's OVERLAP loop with
wgmma.cuh PvInFlight) issues S_t and P_{t-1} V_{t-1} together, computes P_t while the second runs, and adds the tile's
fresh P V sum to O once it lands (P's two parts and that sum held in registers: 240, no spills, every mask and score
modifier on sm_90a). Predicted: forward +10-25% at 4k-8k, less at 1k; forward + backward +3-6%; outputs equal to the
pick's up to the order of float additions (the same products and fresh sums, rescaled after the add instead of
before).

Both tiles in one process, alternated, three rounds: float32, head dim 128, 16k tokens, hidden 2048, seqlens 1k, 4k,
8k, causal and not; forward TFLOP/s (`bench.time_fn`: CUDA events, 3 warm-ups, median), and the largest difference
between the two tiles' outputs and lse. Then each tile's largest |error| of out and lse against float64 at seqlen 1k,
2 heads. From the checkout root: python docs/wip/2026-11-28-highest-fwd-overlap-ab.py"""
import cupy
import numpy as np

import cupyflash as cf
from cupyflash._device import device_limits
from cupyflash.bench import time_fn
from cupyflash.configs import candidates
from cupyflash.problem import Variant
from cupyflash.reference import attention_reference

D = 128
tiles = [c for c in candidates("fwd", device_limits(0), D, Variant("float32", precision="highest"))
         if c.family == "wgmma_tf32"]
assert len(tiles) == 2 and tiles[1].overlap and not tiles[0].overlap, tiles
print("tiles:", ", ".join(map(str, tiles)))


rng = cupy.random.default_rng(0)
for s in (1024, 4096, 8192):
    b, h = 16384 // s, 2048 // D
    q, k, v = (rng.standard_normal((b, s, h, D), dtype=cupy.float32) for _ in range(3))
    for causal in (False, True):
        fl = 4 * b * h * s * s * D / (2 if causal else 1)
        outs = [cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, config=c) for c in tiles]
        d_out = float(cupy.abs(outs[0][0] - outs[1][0]).max())
        d_lse = float(cupy.abs(outs[0][1] - outs[1][1]).max())
        nan = any(bool(cupy.isnan(x).any()) for o in outs for x in o)
        rounds = []
        for _ in range(3):
            rounds.append([fl / time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, config=c)) / 1e9
                           for c in tiles])
        cells = " ".join(f"{a:.1f}/{o:.1f}" for a, o in rounds)
        gain = np.median([o / a for a, o in rounds])
        print(f"S={s} causal={causal}: TFLOP/s pick/overlap {cells}; overlap x{gain:.3f}; outputs differ by "
              f"{d_out:.1e} (out), {d_lse:.1e} (lse); NaN {nan}", flush=True)
    del q, k, v
    cupy.get_default_memory_pool().free_all_blocks()
for causal in (False, True):
    q, k, v = (rng.standard_normal((1, 1024, 2, D), dtype=cupy.float32) for _ in range(3))
    o64, l64 = attention_reference(*(x.astype(cupy.float64) for x in (q, k, v)), causal=causal)
    for c in tiles:
        out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, config=c)
        print(f"{c} causal={causal}: |out - float64| {float(cupy.abs(out - o64).max()):.2e}, "
              f"|lse - float64| {float(cupy.abs(lse - l64).max()):.2e}", flush=True)

"""Probe: block-sparse masks on an overlapped tile at head dim 64 (twentieth session). Prepared block-sparse masks
run on 128x128 tiles with a producer warpgroup and bulk copies (the 192-row lead does not divide 128-row blocks),
whose consumers wait for each product in place; with half of the 128x128 blocks empty the forward took 0.60-0.67x
the unmasked time (bar <= 0.6), and with none empty 1.02-1.23x (the tile's own cost against the lead's). The
overlapped consumers (softmax during their own P V) might run the 128x128 tile faster; and 64x128 tiles at two
blocks an SM, which ran as fast as the lead at 2k (eighteenth session's two-blocks probe), hide a block's fixed cost
under the other block's work, which matters where a block has few tiles to visit (half of 8 at 1k). Expected: the
masked call gains what the tile gains, the bar met at 2k-8k. Forces 128x128 with and without overlap and 64x128 at
two blocks an SM with and without (none but the first is a table entry for block masks at 64: the probe skips
check_config), bf16, 16k tokens, two rounds.
Measured (one H100, `2026-11-27-h100-s20-mask-tile-probe.md`): overlap slows 128x128 (unmasked 0.72-0.92x the lead's
speed against 0.81-0.94; half blocks 0.67-0.71x plain against 0.58-0.67); 64x128 at two blocks an SM runs plain
1.09-1.18x the lead's speed at 1k, 0.97-1.01 at 2k, 0.85-0.98 at 4k-8k, and half blocks at 0.55-0.58x plain (1k),
0.60-0.61 (2k). The 64x128 tile became the head-dim-64 entry for at most 2048 query rows (plain, band, packed); block
masks stay on 128x128: racecheck reported a hazard in the 64x128 kernels that walk them.
From the checkout root: python docs/measurements/2026-11-27-mask-overlap-probe.py"""
import dataclasses
import os
import sys

SEQLENS = (1024, 2048, 4096, 8192)


def main():
    import cupy

    import cupyflash as cf
    from cupyflash import configs, forward
    from cupyflash.bench import _half_empty_blocks, time_fn

    forward.check_config = lambda *args, **kw: None  # 128x128 overlapped is no table entry at 64
    from cupyflash._device import device_limits

    base = configs.select_config("fwd", device_limits(0), 64, variant=None)
    tiles = ([dataclasses.replace(base, block_m=128, block_n=128, warps=12, overlap=o) for o in (False, True)]
             + [dataclasses.replace(base, block_m=64, block_n=128, warps=8, overlap=o, blocks_per_sm=2)
                for o in (False, True)])
    for rnd in (1, 2):
        for d, s, q, k, v, _ in inputs([(64, s) for s in SEQLENS]):
            mask = cf.prepare_mask(_half_empty_blocks(TOKENS // s, s))
            plain = time_fn(lambda: cf.flash_attn_func(q, k, v))
            line = f"round {rnd} d{d} S={s:5d}: plain (lead) {plain * 1e3:7.1f} us"
            if rnd == 1:  # the tiles' masked outputs agree with the first's (the same products, tiled otherwise)
                a, *others = (cf.flash_attn_func(q, k, v, mask=mask, config=c).astype(cupy.float32) for c in tiles)
                line += " (masked outputs differ by " + ", ".join(
                    f"{float(cupy.abs(a - b).max()):.1e}{' NaN' if bool(cupy.isnan(b).any()) else ''}" for b in others) + ")"
            for c in tiles:
                tile = time_fn(lambda: cf.flash_attn_func(q, k, v, config=c))
                masked = time_fn(lambda: cf.flash_attn_func(q, k, v, mask=mask, config=c))
                line += f" | {c}: unmasked {plain / tile:.3f}x lead's speed, half blocks {masked / plain:.3f}x plain"
            print(line, flush=True)
            del mask
            cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from forced_probe import inputs

    from cupyflash.bench import TOKENS

    main()

"""compute-sanitizer racecheck reported a hazard (a read and a write in shared memory, no ordering it recognizes) in
the wgmma forward kernels that walk a block-sparse mask on 64x128 producer tiles at two blocks an SM, with overlapped
consumers and without (twentieth session, H100; memcheck and synccheck clean; results correct against float64). The
table kept block masks off those tiles until it was understood. This forces a tile that walks a block mask (argv:
"64", the short-rows 64x128 tile, or "128", the 128x128 tile block masks take on long rows) on 500 keys, half of
the mask's 128-key blocks empty, so that a walk visits more key tiles than the ring has stages; the kernels are
compiled with -lineinfo, so the report names source lines. Run under the sanitizer from the checkout root:
    compute-sanitizer --tool racecheck --print-limit 4 python docs/measurements/2026-11-29-block-mask-race-probe.py 64
Found (twenty-first session, H100, `2026-11-29-h100-s21-sanitizer.md`): on the tree before the fix the 128x128 tile
reports the same hazard on these inputs; the sanitizer's mask section had only walked two key tiles (190 keys),
never more than the ring's two stages, so no slot was reused there. The read was every consumer lane's of the stashed
entry (`lds_u32` in `stashed`), the write the producer's next stash in the same slot; the order between them went
through `__syncwarp` and lane 0's arrival on the slot's empty barrier, and racecheck carries only the arriving lane's
own reads across an arrival. Fix: lane 0 reads the entry and shuffles it to its warp (`flash_fwd.cu entry_of`).
After it: 0 hazards on both tiles, and the sanitizer's mask section (now 700 keys: six key tiles) clean under
memcheck and racecheck at head dims 64 and 128.
"""
import dataclasses
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))


def main():
    import cupyflash as cf
    from cupyflash import families, forward
    from cupyflash._accuracy import check_against_reference
    from cupyflash._device import device_limits
    from cupyflash.configs import select_config
    from cupyflash.problem import Variant
    from gpu_helpers import make_mask, make_problem

    object.__setattr__(families.WGMMA_SM90, "compile_options", families.WGMMA_SM90.compile_options + ("-lineinfo",))
    forward.check_config = lambda *args, **kw: None  # (the overlap toggled may not be a table entry)
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    # 64: 64x128, two blocks an SM, overlapped; 128: the long rows' pick, 128x128
    lead = select_config("fwd", device_limits(0), 64, variant=Variant("bfloat16", bool_mask=True, mask_blocks=True),
                         seqlen_q=1024 if rows == 64 else None)
    assert lead.block_m == rows, lead
    for config in (lead, dataclasses.replace(lead, overlap=not lead.overlap)):
        for causal in (False, True):
            (q, k, v, _), (q64, k64, v64, _) = make_problem(1, 1, 300, 500, 4, 2, 64, "bfloat16")
            mask, ref = make_mask(np.random.default_rng(2), (1, 4, 300, 500), (False, True, False, False),
                                  "contiguous", 0.5, 128, uniform=True)
            out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, mask=cf.prepare_mask(mask),
                                          config=config)
            check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(64), causal, "bfloat16", mask=ref)
    print(f"block masks on {lead} and with overlap toggled: results match float64")


if __name__ == "__main__":
    main()

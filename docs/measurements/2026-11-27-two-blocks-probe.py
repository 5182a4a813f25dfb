"""Probe: producer tiles at two blocks an SM (issue 10's short causal rows, issue 8's masks at 1k-2k). The
seventeenth session's block-cost probe measured a fixed cost of about 8 us a block (head dim 64, 192x128: launch, Q
and first key tile's latency, pipeline fill and drain, output store) beside 1.4 us a key tile, about 40% of a 2k
causal block; with one block an SM nothing overlaps it. Small producer tiles fit two blocks an SM (72-107 KB of
shared memory; 256 threads at 128 registers each, the consumers raised to 216 by setmaxnreg within their block):
one block's start and end then overlap the other's products. Expected: at 2k causal, head dim 64, 0.82-0.86x cuDNN
-> 0.9-1.0x if the overlap hides most of the fixed cost and the 64-row tiles lose little a key tile (each block
copies its own K and V: twice the L2 -> shared memory traffic of a 128-row tile); at 8k-16k, behind the lead
(issue-bound 64-row warpgroups, less latency hiding). Forced configs (the config check is switched off: not table
entries), compiled in parallel first, each checked against float32 attention on awkward lengths, then TFLOP/s at
2k-16k beside the lead and cuDNN in the same process (bf16, 16k tokens, hidden 2048). From the checkout root,
after `pip install --no-deps --no-build-isolation -e .`:
    timeout 540 python docs/measurements/2026-11-27-two-blocks-probe.py"""
import importlib.util
import pathlib
import sys

from cupyflash.configs import _w

# the short-sequence probe's compile, check and timing loops (its module registered under a name, so that the
# compile pool's workers, which run this script again, find its functions)
_path = pathlib.Path(__file__).resolve().parents[1] / "measurements" / "2026-11-27-h100-short-seqlen-probe.py"
_spec = importlib.util.spec_from_file_location("short_seqlen_probe", _path)
probe = sys.modules.setdefault("short_seqlen_probe", importlib.util.module_from_spec(_spec))
if not hasattr(probe, "main"):
    _spec.loader.exec_module(probe)  # also switches the config check off (tiles outside the table)

P, O = dict(producer=True, tma=True), dict(producer=True, overlap=True, tma=True)
CASES = [(64, _w(192, 128, **P)), (64, _w(64, 128, **P, blocks_per_sm=2)), (64, _w(64, 128, **O, blocks_per_sm=2)),
         (64, _w(64, 192, **P, blocks_per_sm=2)), (64, _w(64, 64, stages=3, **P, blocks_per_sm=2)),
         (128, _w(128, 128, **O)), (128, _w(64, 64, **P, blocks_per_sm=2)), (128, _w(64, 64, **O, blocks_per_sm=2))]



def report_occupancy():
    """Blocks an SM the driver runs each case at (two-block tiles must show 2), from the kernels main() compiled."""
    from cupy_backends.cuda.api import driver

    from cupyflash import _kernels, families
    from cupyflash.problem import Variant

    for kd, cfg in CASES:
        fn = _kernels.get_function(families.WGMMA_SM90, "fwd", cfg, kd, Variant("bfloat16"), 0)
        smem = families.WGMMA_SM90.smem_bytes("fwd", cfg, kd, Variant("bfloat16"))
        blocks = driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, cfg.warps * 32, smem)
        print(f"d{kd} {cfg}: {blocks} block(s) an SM ({smem} bytes of shared memory)", flush=True)


if __name__ == "__main__":
    probe.main(CASES, seqlens=(2048, 4096, 8192, 16384))
    report_occupancy()

"""Probe: why packed rows run 0.73-0.86x the dense batch (bench --varlen, eighteenth session, bulk copies on both).
The block-cost model of the seventeenth session (a fixed ~8 us a block plus ~1.4 us a key tile at head dim 64,
~7.7 + 2.6 at 128) predicts packed / dense of 1.07-1.23 for the bench's lengths (longer sequences amortize the fixed
cost), so something costs packed rows more than their tiles. Times, in one process (bf16, 16k tokens, hidden 2048):
dense 11 x 1489 (flash_attn_func); packed, the bench's lengths; packed, 11 equal lengths of 1489 (the dense batch
packed: isolates the packed kernel's own cost from the lengths); each packed case also on the cp.async producer
tile that packed rows took before (forced). Prints each plan's config and grid. From the checkout root:
    timeout 300 python docs/measurements/2026-11-27-varlen-probe.py"""
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from cupyflash import families, forward
from cupyflash.configs import _w
from cupyflash.problem import Variant

forward.check_config = lambda *a, **k: None
CPASYNC = {64: _w(128, 192, producer=True), 128: _w(128, 128, producer=True, overlap=True)}


def _compile(job):
    from cupyflash import _kernels
    kd, cfg, variant = job
    _kernels.get_function(families.WGMMA_SM90, "fwd", cfg, kd, variant, 0)
    return job


def main():
    import cupy as cp
    import numpy as np

    import cupyflash as cf
    from cupyflash.bench import make_inputs, time_fn, useful_flops, varlen_lengths
    from cupyflash.configs import select_config
    from cupyflash._device import device_limits

    limits = device_limits(0)
    jobs = []
    for kd in (64, 128):
        for mask in ("none", "band"):
            for rows in ("dense", "packed"):
                v = Variant("bfloat16", mask, rows=rows)
                jobs.append((kd, select_config("fwd", limits, kd, variant=v), v))
            jobs.append((kd, CPASYNC[kd], Variant("bfloat16", mask, rows="packed")))
    t0 = time.time()
    with ProcessPoolExecutor(12, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, jobs))
    print(f"compiled {len(jobs)} in {time.time() - t0:.0f} s", flush=True)
    real = varlen_lengths()
    mean = round(sum(real) / len(real))
    equal = [mean] * len(real)
    for kd in (64, 128):
        H = 2048 // kd
        for causal in (False, True):
            dense = make_inputs(len(real), mean, H, kd, "bfloat16")
            ms = time_fn(lambda: cf.flash_attn_func(*dense, causal=causal))
            base = useful_flops(equal, H, kd, causal) / ms / 1e9
            print(f"d{kd} causal={causal} dense {len(real)}x{mean}: {ms:.3f} ms {base:.0f} TFLOP/s "
                  f"{forward.plan_for(*dense, causal=causal).config}", flush=True)
            for name, lengths in (("real", real), ("equal", equal)):
                total = sum(lengths)
                qkv = [x[0] for x in make_inputs(1, total, H, kd, "bfloat16")]
                cu = cp.asarray(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
                for label, cfg in (("pick", None), ("cp.async", CPASYNC[kd])):
                    fn = lambda: cf.flash_attn_varlen_func(*qkv, cu, cu, max(lengths), max(lengths), causal=causal,
                                                           config=cfg)
                    ms = time_fn(fn)
                    tf = useful_flops(lengths, H, kd, causal) / ms / 1e9
                    print(f"d{kd} causal={causal} packed {name} {label}: {ms:.3f} ms {tf:.0f} TFLOP/s "
                          f"{tf / base:.2f}x dense", flush=True)


if __name__ == "__main__":
    main()

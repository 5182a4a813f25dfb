"""Exposed cost of the offsets check in flash_attn_varlen_func: CUDA-event time and host time a call, with the
check and with it switched off (cupyflash._offsets.check; before 2026-11-27 varlen._check_offsets, read back at
every call), packed lengths of bench --varlen and equal ones against the dense batch. From the checkout root:
    python docs/measurements/2026-11-27-varlen-sync-probe.py"""
import time, numpy as np, cupy as cp
import cupyflash as cf, cupyflash._offsets as vl
from cupyflash.bench import make_inputs, time_fn, varlen_lengths
real = varlen_lengths(); mean = round(sum(real) / len(real)); equal = [mean] * len(real)
orig = vl.check
for kd in (64, 128):
    H = 2048 // kd
    dense = make_inputs(len(real), mean, H, kd, "bfloat16")
    print(f"d{kd} dense {time_fn(lambda: cf.flash_attn_func(*dense)):.3f} ms")
    for name, lengths in (("real", real), ("equal", equal)):
        qkv = [x[0] for x in make_inputs(1, sum(lengths), H, kd, "bfloat16")]
        cu = cp.asarray(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        fn = lambda: cf.flash_attn_varlen_func(*qkv, cu, cu, max(lengths), max(lengths))
        for check in (True, False):
            vl.check = orig if check else (lambda *a: None)
            ms = time_fn(fn)
            cp.cuda.Device().synchronize(); t = time.perf_counter()
            for _ in range(50): fn()
            host = (time.perf_counter() - t) / 50 * 1e6
            cp.cuda.Device().synchronize(); wall = (time.perf_counter() - t) / 50 * 1e6
            print(f"d{kd} packed {name} check={check}: events {ms:.3f} ms, host {host:.0f} us/call, wall {wall:.0f} us/call")
vl.check = orig
cu = cp.asarray(np.concatenate([[0], np.cumsum(real)]).astype(np.int32))
cp.cuda.Device().synchronize(); t = time.perf_counter()
for _ in range(100): cu.get().tolist()
print(f"cu.get().tolist(): {(time.perf_counter() - t) / 100 * 1e6:.1f} us")

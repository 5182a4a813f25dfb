"""Compile every float32 "highest" candidate tile (not only the picks) with plain scores, unmasked and with the band
mask, for the forward and backward kernels (atomic dQ and not) at every kernel head dim on ARCH, or (env BIAS, e.g.
float32) the backward kernels with that bias (and dbias) up to head dim 128; print those that spill. Thirtieth
session. python docs/measurements/2026-11-28-highest-candidates-sweep.py TREE ARCH JOBS"""
import sys, time
tree, arch, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, tree)
from cupyflash import _nvrtc
from cupyflash.configs import candidates, KERNEL_HEAD_DIMS
from cupyflash.families import BY_NAME
from cupyflash.problem import Variant
lim = _nvrtc.ARCH_GPUS[arch]
inst = set()
import os
BIAS = os.environ.get("BIAS")  # e.g. "float32": backward kernels with that bias (and dbias in the dK/dV kernel)
for kind in (("bwd", "bwd_dq") if BIAS else ("fwd", "bwd", "bwd_dq")):
    for kd in (k for k in KERNEL_HEAD_DIMS if not BIAS or k <= 128):
        for m in ("none", "band"):
            v = Variant("float32", m, precision="highest", **(dict(bias=BIAS, dbias=kind == "bwd") if BIAS else {}))
            for c in candidates(kind, lim, kd, v):
                fam = BY_NAME[c.family]
                if arch not in fam.archs:
                    continue
                for atomic in ((True, False) if kind == "bwd" else (False,)):
                    inst.add((fam.sources[kind], fam.kernel_name(kind, c, kd, v, atomic)))
inst = sorted(inst)
print(f"{arch}: {len(inst)} instances", flush=True)
t = time.time()
res = _nvrtc.compile_all(archs=(arch,), jobs=jobs, group_size=4, instances=inst)
for (a, n), r in sorted(res.items()):
    if r.spill_stores or r.spill_loads:
        print(f"SPILL {a} regs={r.registers} spill={r.spill_stores}/{r.spill_loads} {n[:170]}")
print(f"{len(res)} compiled in {time.time() - t:.0f} s", flush=True)

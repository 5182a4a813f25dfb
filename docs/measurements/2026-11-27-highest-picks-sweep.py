"""Compile the float32 "highest" mma_tf32 picks that the small-terms-first and bias-after patches touch (set A: plain
scores, no bias, dropout or packed rows; set B: backward kernels with a bias or boolean mask, plain scores, no dropout
or block mask) for ARCH and print those that spill. python docs/measurements/2026-11-27-highest-picks-sweep.py TREE
ARCH JOBS (TREE: a directory holding cupyflash/ and cuda_src/, e.g. a git archive of a commit)."""
import sys, time
tree, arch, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, tree)
from cupyflash import _nvrtc
picks = sorted(set(_nvrtc.picks(arch, dtypes=("float32",))))
f32 = [(f, n) for f, n in picks if "f32x3" in n and "Warpgroup" not in n]
A = [(f, n) for f, n in f32 if "ScoreMod<false, false>, cf::NoBias, cf::DenseRows, cf::NoDropout" in n]
B = [(f, n) for f, n in f32 if "bwd_" in n and "NoBias" not in n and "ScoreMod<false, false>" in n
     and "NoDropout" in n and "BlockMask" not in n]
sel = sorted(set(A + B))
print(f"{arch}: A {len(A)}, B {len(B)}, compiling {len(sel)}", flush=True)
t = time.time()
res = _nvrtc.compile_all(archs=(arch,), jobs=jobs, group_size=4, instances=sel)
for (a, n), r in sorted(res.items()):
    if r.spill_stores or r.spill_loads:
        print(f"SPILL {a} regs={r.registers:3d} spill={r.spill_stores}/{r.spill_loads} {n}")
print(f"{len(res)} compiled in {time.time() - t:.0f} s", flush=True)

"""The float32 "highest" picks whose accumulate slices columns (twenty-fifth session, first form: at every head dim),
compiled for sm_90 and sm_80 (argv[1]: jobs), with the spilling ones compiled again from the sources before the
change, which the run found in old_src/ beside it (`git show ff1a83d:cuda_src/<file>` for each). As run on the 4-GPU
host; result: `2026-11-27-h100-s25-sliced-picks.md`. The final tree slices at head dims up to 192 only."""
import re, sys, time
from cupyflash._nvrtc import picks, compile_all
def args(name):
    inner = name[name.index("<") + 1:name.rindex(">")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "<": depth += 1
        if ch == ">": depth -= 1
        if ch == "," and depth == 0: parts.append(cur.strip()); cur = ""
        else: cur += ch
    parts.append(cur.strip()); return parts
def sliced(name):
    a = args(name)
    if a[0] != "cf::f32x3" or "WarpgroupMma" in name: return False
    kd, bm, bn, warps = map(int, a[1:5])
    if "dkdv" in name:
        d_split = int(a[13]); m, n, cap = bn // (warps // d_split) // 16, kd // d_split // 8, 48
    else:
        m, n, cap = bm // warps // 16, kd // 8, 96
    return m * n * 4 > cap and n % 4 == 0 and m * n * 2 <= cap
sel = []
for arch in ("sm_90", "sm_80"):
    for s, n in picks(arch, dtypes=("float32",), biases=("none", "float32")):
        if sliced(n): sel.append((arch, s, n))
by = {}
for arch, s, n in sel: by.setdefault((arch, s.split(".")[0], args(n)[1]), 0); by[(arch, s.split(".")[0], args(n)[1])] += 1
print(len(sel), by, flush=True)
if len(sys.argv) > 1:
    t = time.time(); bad = 0; SPILLING = {}
    for arch in ("sm_90", "sm_80"):
        inst = [(s, n) for a, s, n in sel if a == arch]
        res = compile_all(archs=(arch,), jobs=int(sys.argv[1]), instances=inst)
        for (a, n), r in res.items():
            if r.spill_stores or r.spill_loads or r.stack_frame:
                bad += 1; print("SPILL", a, r, n[:200]); SPILLING.setdefault(arch, set()).add(n)
        print(arch, len(res), "compiled", f"{time.time()-t:.0f}s", flush=True)
    print("spilling:", bad)
    # the spilling ones from the sources before the change (HEAD, .prof/old_src)
    import pathlib
    from cupyflash import _kernels
    from cupyflash._nvrtc import compile_report
    root = pathlib.Path(__file__).parent / "old_src"
    def old_source(filename, seen=None):
        seen = set() if seen is None else seen
        if filename in seen: return ""
        seen.add(filename)
        text = (root / filename).read_text().replace("#pragma once", "")
        return _kernels._INCLUDE.sub(lambda m: old_source(m.group(1), seen), text)
    for arch in ("sm_90", "sm_80"):
        for a, s, n in sel:
            if a == arch and n in SPILLING.get(arch, set()):
                r = list(compile_report(old_source(s), [n], arch).values())[0]
                print("BEFORE", arch, r, n[:200], flush=True)

#!/bin/bash
# The thirtieth session's two prepared patches on the GPU (one H100; about 8 minutes of a 10-minute command).
# Before the run, here: git apply docs/wip/2026-11-28-highest-fwd-overlap.patch \
#   docs/wip/2026-11-28-highest-bwd-halves-in-flight.patch
# and put main's tree in .prof/base (mkdir -p .prof/base && git archive main cupyflash cuda_src pyproject.toml |
# tar -x -C .prof/base), then: run bash docs/wip/2026-11-28-next-gpu-run.sh with carry [".prof"].
# The forward's new tile is a second candidate (the pick unchanged), so the trees' A/B measures the backward patch
# alone and the overlap A/B the forward's tiles side by side in the patched tree.
export CUPYFLASH_QUIET=1 CUPY_CACHE_DIR=$PWD/.cupy_cache
R=$PWD; T0=$(date +%s)
pip install --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1
(PYTHONPATH=$R python -m cupyflash precompile --jobs 10 --dtypes float32 > "$OUT/pre.log" 2>&1; echo pre rc $?) &
(cd .prof/base && PYTHONPATH=$PWD python -m cupyflash precompile --jobs 6 --dtypes float32 --kinds fwd bwd \
   --head-dims 128 > "$OUT/pre-base.log" 2>&1; echo pre base rc $?) &
wait; echo precompiled $(( $(date +%s) - T0 )) s
PYTHONPATH=$R timeout 150 python docs/wip/2026-11-28-highest-fwd-overlap-ab.py > "$OUT/fwd-overlap.log" 2>&1
echo overlap rc $? $(( $(date +%s) - T0 )) s; cat "$OUT/fwd-overlap.log"
for r in 1 2 3; do
  (cd .prof/base && PYTHONPATH=$PWD timeout 90 python "$R/docs/measurements/2026-11-27-highest-fwd-bwd-ab.py" main) \
    >> "$OUT/ab.log" 2>&1
  PYTHONPATH=$R timeout 90 python docs/measurements/2026-11-27-highest-fwd-bwd-ab.py halves >> "$OUT/ab.log" 2>&1
done
echo ab $(( $(date +%s) - T0 )) s; cat "$OUT/ab.log"
PYTHONPATH=$R timeout 250 python -m pytest -q -rs -p no:cacheprovider tests/test_fp32_gpu.py \
  > "$OUT/fp32-suite.log" 2>&1
echo suite rc $? $(( $(date +%s) - T0 )) s; tail -3 "$OUT/fp32-suite.log"

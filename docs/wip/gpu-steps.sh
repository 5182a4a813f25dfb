#!/usr/bin/env bash
# The GPU steps that verify docs/wip, in device commands of at most 10 minutes each (sixteenth session's timings:
# a forward precompile about 2.5 min, the forward suites about 3, a mask precompile and suites about 5).
#   bash docs/wip/gpu-steps.sh baseline   # on main as it is: block-cost probe, forward bench (for the gate)
#   git apply docs/wip/*.patch            # (here, before the next command; both apply together)
#   bash docs/wip/gpu-steps.sh forward    # patched: forward suites, sanitizer, forward bench beside the baseline
#   bash docs/wip/gpu-steps.sh masks      # patched: mask suites, sanitizer masks section, bench --mask
# Logs under $OUT (at most 8 files come back from the device: the rest are packed).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export CUPYFLASH_QUIET=1 CUPY_CACHE_DIR=$PWD/.cupy_cache PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 ||
  { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
fwd_bench="python -m cupyflash.bench --impls cupyflash torch-cudnn --headdim 64 128 --seqlen 2048 4096 8192 16384
           --no-bwd --dtype bfloat16 float16"
case ${1:-} in
  baseline)
    timeout 300 python docs/wip/2026-11-27-block-cost-probe.py 2>&1 | tee "$OUT/block-cost.log"
    $fwd_bench --markdown "$OUT/fwd-main.md" --csv "$OUT/fwd-main.csv" >"$OUT/fwd-main.log" 2>&1
    grep "vs torch-cudnn" "$OUT/fwd-main.log" ;;
  forward)
    python -m cupyflash.precompile --jobs 16 --variants --dtypes float16 bfloat16 --kinds fwd 2>&1 | tail -n 1
    timeout 330 python -m pytest -q -rs -p no:cacheprovider --maxfail=10 tests/test_forward_gpu.py \
      tests/test_variants_gpu.py tests/test_split_kv_gpu.py >"$OUT/pytest-forward.log" 2>&1
    echo "pytest rc $?"; tail -n 4 "$OUT/pytest-forward.log"
    $fwd_bench --markdown "$OUT/fwd-patched.md" --csv "$OUT/fwd-patched.csv" >"$OUT/fwd-patched.log" 2>&1
    grep "vs torch-cudnn" "$OUT/fwd-patched.log" ;;
  masks)
    python -m cupyflash.precompile --jobs 16 --variants --dtypes float16 bfloat16 --bias bool 2>&1 | tail -n 1
    timeout 240 python -m pytest -q -rs -p no:cacheprovider --maxfail=10 tests/test_mask_gpu.py \
      tests/test_mask_bias_gpu.py >"$OUT/pytest-masks.log" 2>&1
    echo "pytest rc $?"; tail -n 4 "$OUT/pytest-masks.log"
    for tool in memcheck racecheck synccheck; do
      # (masks: band and boolean masks with their backward, precompiled above; persistent: causal producer
      # tiles, forward only)
      timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 python tests/gpu_sanitize_variants.py \
        --variants-only --only masks persistent --head-dims 64,128 >"$OUT/sanitize-$tool.log" 2>&1
      echo "$tool $?: $(grep -E 'SUMMARY|ran [0-9]+' "$OUT/sanitize-$tool.log" | tr '\n' ' ')"
    done
    timeout 200 python -m cupyflash.bench --mask --markdown "$OUT/mask.md" >"$OUT/mask.log" 2>&1
    grep "^- " "$OUT/mask.log" ;;
  *) echo "usage: bash docs/wip/gpu-steps.sh baseline|forward|masks"; exit 2 ;;
esac
tar czf /tmp/wip-logs.tgz -C "$OUT" . && find "$OUT" -type f ! -name '*.md' ! -name '*.csv' -delete
mv /tmp/wip-logs.tgz "$OUT/"

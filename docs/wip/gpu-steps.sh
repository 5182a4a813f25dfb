#!/usr/bin/env bash
# The wip's GPU steps on a 4-GPU host, in two device commands (each under 10 minutes), after `git am
# docs/wip/2026-11-28-key-row-everywhere.patch` on the CPU:
#   bash docs/wip/gpu-steps.sh precompile   # ~5 min on 64 cores: the bias kernels, both families
#   bash docs/wip/gpu-steps.sh check        # ~5 min: suites (wgmma and mma_sm80 forced), sanitizer, probe, a GPU each
set -uo pipefail
cd "$(dirname "$0")/../.."
export CUPY_CACHE_DIR=$PWD/.cupy_cache PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUPYFLASH_QUIET=1
O=${OUT:-gpu-logs}; L=/tmp/wip-steps; mkdir -p $O $L
python -m pip install -q --no-deps --no-build-isolation -e . > $O/install.log 2>&1 || { cat $O/install.log; exit 1; }
case ${1:-check} in
  precompile)
    python -m cupyflash.precompile --jobs $(nproc) --variants --dtypes float16 bfloat16 \
      --bias bfloat16 float16 float32 2>&1 | tail -n 1
    CUPYFLASH_DISABLE_FAMILIES=wgmma_sm90 python -m cupyflash.precompile --jobs $(nproc) --variants \
      --dtypes float16 bfloat16 --bias bfloat16 float16 --kinds fwd 2>&1 | tail -n 1 ;;
  check)
    suites="tests/test_bias_gpu.py tests/test_mask_bias_gpu.py"
    ( CUDA_VISIBLE_DEVICES=0 timeout 400 python -m pytest -q -rs -p no:cacheprovider $suites > $L/bias.log 2>&1 ) &
    ( CUDA_VISIBLE_DEVICES=1 CUPYFLASH_DISABLE_FAMILIES=wgmma_sm90 timeout 400 python -m pytest -q -rs \
        -p no:cacheprovider $suites > $L/bias-sm80.log 2>&1 ) &
    ( export CUDA_VISIBLE_DEVICES=2
      for tool in memcheck racecheck; do
        timeout 180 compute-sanitizer --tool $tool --error-exitcode 9 python tests/gpu_sanitize_variants.py \
          --variants-only --only biases --head-dims 64,128,256 > $L/san-$tool.log 2>&1
        echo "biases $tool rc $?: $(grep -E 'SUMMARY|ran [0-9]+' $L/san-$tool.log | tr '\n' ' ')" >> $L/san.txt
      done ) &
    ( CUDA_VISIBLE_DEVICES=3 timeout 400 python docs/wip/2026-11-28-key-bias-probe.py > $L/probe.log 2>&1 ) &
    wait
    for f in bias bias-sm80; do echo "$f: $(tail -n 1 $L/$f.log)"; grep -E "^(FAILED|ERROR)" $L/$f.log | head -n 5; done
    cat $L/san.txt $L/probe.log
    tar czf $O/wip-logs.tgz -C $L . ;;
esac

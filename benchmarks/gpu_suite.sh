#!/usr/bin/env bash
# Issue 21's GPU measurements in one run (installs nothing; needs torch with CUDA, diffusers, and torchao for the
# quantisation part). Full-size random weights, bf16, no download. Each part writes
# benchmarks/results/<gpu>-<part>.txt (the report) and .json (the records), so a part that fails or is cut off
# leaves the others. Parts are ordered by priority; on an H100/H200 the whole suite is planned for ~8 minutes
# (an estimate: each part prints how long it took). Parts: main (T2I and edit 512, T2I 1024, batch 4; eager,
# compile, cache, compile+cache), quant (fp8, fp8+compile, int8 weight-only), offload (model, group; 10 steps),
# extra (CUDA graphs).
#
#   benchmarks/gpu_suite.sh            # full: deepgen-1.0, 512/1024, 50 steps, 1 warm-up + 5 timed runs
#   benchmarks/gpu_suite.sh dry        # CPU check of the suite itself: nano preset, 64 px, 2 steps, no compile
#
# RESULTS_DIR overrides the output folder.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

profile="${1:-full}"
case "$profile" in
  full)  # budget (estimated, H100/H200): main ~4.5 min, quant ~1.5 min, offload ~1 min, cudagraphs ~1 min
    preset=deepgen-1.0; steps=50; warmup=1; repeats=5; offload_steps=10
    main_cases="t2i:512 edit:512 t2i:1024 t2i:512:4"; small_case="t2i:512"
    main_modes="compile+cache compile cache"; quant_modes="fp8+compile fp8 int8"; extra_modes="cudagraphs" ;;
  dry)
    preset=nano; steps=2; warmup=1; repeats=1; offload_steps=2
    main_cases="t2i:64 edit:64 t2i:64:2"; small_case="t2i:64"
    main_modes="cache"; quant_modes="fp8 int8"; extra_modes="" ;;
  *)
    echo "usage: $0 [full|dry]" >&2; exit 2 ;;
esac

gpu="$(python -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' \
       | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')"
results="${RESULTS_DIR:-benchmarks/results}"
mkdir -p "$results"
failed=0

bench() {  # bench PART [bench_pipeline.py options...]
  local part="$1"; shift
  echo "== $part: $*" >&2
  local start=$SECONDS
  if ! python benchmarks/bench_pipeline.py --preset "$preset" --warmup "$warmup" --repeats "$repeats" \
      --out "$results/$gpu-$part.txt" --json "$results/$gpu-$part.json" "$@"; then
    echo "== $part FAILED" >&2; failed=1
  fi
  echo "== $part took $((SECONDS - start)) s" >&2
}

# shellcheck disable=SC2086  # case and mode lists are word lists on purpose
{
  bench main --case $main_cases --steps "$steps" --modes eager $main_modes
  bench quant --case $small_case --steps "$steps" --modes eager $quant_modes
  bench offload --case $small_case --steps "$offload_steps" --modes eager offload-model offload-group
  if [ -n "$extra_modes" ]; then bench extra --case $small_case --steps "$steps" --modes eager $extra_modes; fi
}
exit "$failed"

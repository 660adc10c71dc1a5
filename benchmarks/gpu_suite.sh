#!/usr/bin/env bash
# Issue 21's GPU measurements in one run (installs nothing; needs torch with CUDA, diffusers, and torchao for the
# quantisation part). Full-size random weights, bf16, no download. Each part writes
# benchmarks/results/<gpu>-<part>.txt (the report) and .json (the records), so a part that fails or is cut off
# leaves the others. Parts are ordered by priority; on an H100/H200 the whole suite is planned for ~8 minutes.
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
  full)
    preset=deepgen-1.0; steps=50; size=512; big=1024; warmup=1; repeats=5; offload_steps=10
    main_modes="compile cache compile+cache cudagraphs"; big_modes="compile compile+cache"
    batch_modes="compile"; quant_modes="fp8 fp8+compile int8" ;;
  dry)
    preset=nano; steps=2; size=64; big=64; warmup=1; repeats=1; offload_steps=2
    main_modes="cache"; big_modes="cache"; batch_modes=""; quant_modes="fp8 int8" ;;
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

# shellcheck disable=SC2086  # mode lists are word lists on purpose
{
  bench main --task t2i edit --size "$size" --steps "$steps" --modes eager $main_modes
  bench large --task t2i --size "$big" --steps "$steps" --modes eager $big_modes
  bench batch --task t2i --size "$size" --batch 4 --steps "$steps" --modes eager $batch_modes
  bench quant --task t2i edit --size "$size" --steps "$steps" --modes eager $quant_modes
  bench offload --task t2i --size "$size" --steps "$offload_steps" --modes eager offload-model offload-group
}
exit "$failed"

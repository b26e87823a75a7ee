#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md, in one go: one log per run under $OUT (default bench-out/).
#
#   bash scripts/gpu_benchmarks.sh head attribute generate autotune      # any subset, in this order
#
# Each run has its own time limit (T seconds, default 300) so that one hang does not cost the others. On a machine
# whose commands may run 10 minutes at most, run one stage per command.
set -u
out=${OUT:-bench-out}
mkdir -p "$out"
py=${PYTHON:-python3}
limit=${T:-300}
export PYTHONUNBUFFERED=1

run() {  # run NAME ARGS...: one benchmark, its output to $out/NAME.log (JSON last)
  local name=$1
  shift
  echo "== $name: $*"
  timeout "${LIMIT:-$limit}" "$py" "$@" >"$out/$name.log" 2>&1
  echo "rc=$?"
  grep -v -i -e warning -e warn "$out/$name.log" | tail -c 1200 | tr -d '\n' | tr -s ' '
  echo
}

gen=(scripts/bench_generate.py --precision fp16 --steps 25 --scheduler dpmsolver++ --images 256)
for stage in "$@"; do
  case $stage in
    head)
      run head scripts/bench_head.py --device cuda --num-workers 14 ;;
    attribute)
      for d in hybrid gpu cpu; do
        run "attr_$d" scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 14 --decode $d
      done
      run attr_decode_only_hybrid scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 \
        --workers 14 --decode hybrid --decode-only
      run attr_1000_classes scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 14 \
        --decode hybrid --classes 1000
      run attr_text_1000_classes scripts/bench_attribute.py --device cuda --text-only --classes 1000 --contexts 8 \
        --batch-size 1024 ;;
    generate)  # the naive call vs failmode's path, then speed levers and the quality filter (each run compiles anew)
      run gen_default "${gen[@]}" --batch-size 16 --compile default --naive-images 4
      run gen_fused_bs32 "${gen[@]}" --batch-size 32 --compile default --fuse-qkv --skip-naive
      run gen_quality "${gen[@]}" --batch-size 16 --compile default --quality ViT-B-32 --skip-naive ;;
    autotune)  # max-autotune compiles for minutes: a stage of its own
      LIMIT=540 run gen_autotune "${gen[@]}" --batch-size 16 --compile max-autotune --fuse-qkv --skip-naive ;;
    *)
      echo "unknown stage $stage (head, attribute, generate, autotune)" >&2
      exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Issue 30 in one device call: every part under its own time limit, one log per part and all JSON results in
# $OUT/results.jsonl; then scripts/gpu_summary.py adds the ratios and the build projection ($OUT/summary.json).
# Seven files in all under $OUT. Packages the device lacks come from bench-wheels/ (pip download --no-deps).
#
#   OUT=bench-out bash scripts/gpu_device_run.sh            # on the device (about 8.5 min on an H200)
#   OUT=tmp-out TINY=1 bash scripts/gpu_device_run.sh       # CPU smoke run of the same path
#
# STEADY=1 runs the second set instead (about 4.5 min on an H200; five files: generate.log, gen_profile.txt,
# features.log, attr_gpu.log, results.jsonl): steady-state figures after warm-up and loader start-up beside end to
# end. Generation: the plain compiled pipeline call vs failmode's render alone vs failmode's whole path (encoding
# and shard writing), all on one compiled pipeline (one compile), plus a profile of one render batch; features
# (resnet50) and attribution (ViT-B-32) from JPEG files vs the model alone.
set -u
out=${OUT:-bench-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-.}
site=$(mktemp -d)
if [ -d bench-wheels ]; then  # the pure-Python packages the device lacks, installed beside the tree (no network)
  "$py" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir --target "$site" bench-wheels/*.whl 2>&1 | tail -3
  export PYTHONPATH=$PYTHONPATH:$site
fi
part() {  # part NAME SECONDS JSONFILE ARGS...
  local name=$1 limit=$2 js=$3
  shift 3
  echo "== $name ($limit s): $*"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$py" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc wall=$((SECONDS - t0))s"
  if [ -s "$js" ]; then
    "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); d['part']=sys.argv[2]; print(json.dumps(d))" "$js" "$name" >>"$out/results.jsonl"
  else
    grep -h '^{"bench"' "$out/$name.log" | sed "s/^{/{\"part\": \"$name\", /" >>"$out/results.jsonl"
  fi
  echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" >>"$out/results.jsonl"
}
tmp=$(mktemp -d)
if [ -n "${STEADY:-}" ] && [ -n "${TINY:-}" ]; then
  part generate 150 "$tmp/gen.json" scripts/bench_generate.py --tiny --device cpu --precision fp32 --size 64 \
    --steps 2 --images 8 --batch-size 4 --compile none --skip-naive --steady-batches 2 \
    --profile "$out/gen_profile.txt" --json "$tmp/gen.json"
  part features 120 "$tmp/feat.json" scripts/bench_head.py --device cpu --skip head --model resnet18 --images 64 \
    --batch-size 8 --image-size 64 --jpeg-size 80x60 --decode cpu,hybrid --num-workers 2 --out "$tmp/feat.json"
  part attr_cpu 120 none scripts/bench_attribute.py --device cpu --model failmode-tiny-clip --n 128 \
    --jpeg-size 64x48 --batch-size 16 --workers 2 --decode hybrid --model-only-batches 2
elif [ -n "${STEADY:-}" ]; then
  part generate 175 "$tmp/gen.json" scripts/bench_generate.py --skip-naive --precision fp16 --steps 25 \
    --scheduler dpmsolver++ --images 64 --batch-size 16 --compile default --steady-batches 3 \
    --profile "$out/gen_profile.txt" --json "$tmp/gen.json"
  part features 60 "$tmp/feat.json" scripts/bench_head.py --device cuda --skip head --num-workers 14 \
    --images 16384 --decode hybrid,gpu --out "$tmp/feat.json"
  part attr_gpu 50 none scripts/bench_attribute.py --device cuda --n 30000 --batch-size 1024 --workers 14 \
    --decode gpu --model-only-batches 20
elif [ -n "${TINY:-}" ]; then
  part generate 120 "$tmp/gen.json" scripts/bench_generate.py --tiny --device cpu --precision fp32 --size 64 \
    --steps 2 --naive-steps 2 --images 8 --naive-images 1 --batch-size 4 --compile none --json "$tmp/gen.json"
  part head 120 "$tmp/head.json" scripts/bench_head.py --device cpu --n 512 --dim 64 --classes 10 --epochs 20 \
    --model resnet18 --images 32 --batch-size 16 --image-size 64 --jpeg-size 80x60 --decode pil,cpu --num-workers 1 \
    --out "$tmp/head.json"
  part attr_cpu 120 none scripts/bench_attribute.py --device cpu --model failmode-tiny-clip --n 64 \
    --jpeg-size 64x48 --batch-size 32 --workers 1 --model-only-batches 2
else
  part generate 200 "$tmp/gen.json" scripts/bench_generate.py --precision fp16 --steps 25 --scheduler dpmsolver++ \
    --images 256 --batch-size 16 --compile default --naive-images 3 --json "$tmp/gen.json"
  part head 120 "$tmp/head.json" scripts/bench_head.py --device cuda --num-workers 14 --images 8192 \
    --decode cpu,hybrid,gpu --out "$tmp/head.json"
  for d in hybrid gpu; do
    part "attr_$d" 70 none scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 14 --decode $d --model-only-batches 20
  done
  part attr_decode_only 50 none scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 14 \
    --decode hybrid --decode-only
fi
rm -rf "$tmp" "$site"
if [ -n "${STEADY:-}" ]; then
  cat "$out/results.jsonl"
  exit 0
fi
"$py" scripts/gpu_summary.py "$out/results.jsonl" >"$out/summary.json"
cat "$out/summary.json"

#!/usr/bin/env bash
# Issue 30, second device call: steady-state figures after warm-up and loader start-up, beside end to end, in one
# run. Generation: the plain compiled pipeline call vs failmode's render alone vs failmode's whole path (encoding
# and shard writing), all on one compiled pipeline (one compile), plus a profile of one render batch. Features
# (resnet50) and attribution (ViT-B-32) from JPEG files: end to end and steady state vs the model alone.
# Five files under $OUT: generate.log, gen_profile.txt, features.log, attr_gpu.log, results.jsonl.
#
#   OUT=bench-out bash scripts/gpu_device_steady.sh          # on the device (about 4.5 min on an H200)
#   OUT=tmp-out TINY=1 bash scripts/gpu_device_steady.sh     # CPU smoke run of the same path
set -u
out=${OUT:-bench-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-.}
site=$(mktemp -d)
if [ -d bench-wheels ]; then  # the pure-Python packages the device lacks (no network)
  "$py" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir --target "$site" bench-wheels/*.whl 2>&1 | tail -3
  export PYTHONPATH=$PYTHONPATH:$site
fi
tmp=$(mktemp -d)
part() {  # part NAME SECONDS JSONFILE ARGS...: one log per part, its JSON (file or '{"bench"' lines) to results.jsonl
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
if [ -n "${TINY:-}" ]; then
  part generate 150 "$tmp/gen.json" scripts/bench_generate.py --tiny --device cpu --precision fp32 --size 64 \
    --steps 2 --images 8 --batch-size 4 --compile none --skip-naive --steady-batches 2 \
    --profile "$out/gen_profile.txt" --json "$tmp/gen.json"
  part features 120 "$tmp/feat.json" scripts/bench_head.py --device cpu --skip head --model resnet18 --images 64 \
    --batch-size 8 --image-size 64 --jpeg-size 80x60 --decode cpu,hybrid --num-workers 2 --out "$tmp/feat.json"
  part attr_cpu 120 none scripts/bench_attribute.py --device cpu --model failmode-tiny-clip --n 128 \
    --jpeg-size 64x48 --batch-size 16 --workers 2 --decode hybrid --model-only-batches 2
else
  part generate 175 "$tmp/gen.json" scripts/bench_generate.py --skip-naive --precision fp16 --steps 25 \
    --scheduler dpmsolver++ --images 64 --batch-size 16 --compile default --steady-batches 4 \
    --profile "$out/gen_profile.txt" --json "$tmp/gen.json"
  part features 60 "$tmp/feat.json" scripts/bench_head.py --device cuda --skip head --num-workers 14 \
    --images 16384 --decode hybrid,gpu --out "$tmp/feat.json"
  part attr_gpu 50 none scripts/bench_attribute.py --device cuda --n 30000 --batch-size 1024 --workers 14 \
    --decode gpu --model-only-batches 20
fi
rm -rf "$tmp" "$site"
cat "$out/results.jsonl"

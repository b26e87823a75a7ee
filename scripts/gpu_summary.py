"""Issue 30's figures from scripts/gpu_device_run.sh's results.jsonl: ratios, UNet TFLOP/s, and a stage-by-stage
projection of `failmode build imagenet-bg-debug` on one device (an estimate from the measured rates).

    python scripts/gpu_summary.py bench-out/results.jsonl
"""

from __future__ import annotations

import json
import sys
from typing import Any

UNET_TFLOP_PER_CFG_PAIR = 1.6065  # SD 1.5 UNet at 512 px, one prompt with CFG (FlopCounterMode, the H100 anchor)
PEAK_TFLOPS = 989.5  # H100/H200 dense fp16/bf16
PRESET = {"models": 5, "generated_images": 90_000, "images_per_model": 60_000, "head_fits": 20}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of every part found in the results, plus the projection."""
    by = {r["part"]: r for r in rows if "rc" not in r}
    out: dict[str, Any] = {"runs": [r for r in rows if "rc" in r]}
    gen = by.get("generate")
    if gen:
        tk = gen["toolkit"]
        steps = gen["args"]["steps"]
        tflops = tk["images"] * steps * UNET_TFLOP_PER_CFG_PAIR / tk["render_s"]
        out["generate"] = {"naive_img_s": gen.get("naive_images_per_s"), "toolkit_img_s": tk["images_per_s"],
                           "ratio": tk["images_per_s"] / gen["naive_images_per_s"]
                           if gen.get("naive_images_per_s") else None,
                           "shard_writing_pct_of_render": tk["shard_writing_overhead_pct_of_gpu"],
                           "unet_tflops_lower_bound": round(tflops, 1),
                           "pct_of_peak": round(100 * tflops / PEAK_TFLOPS, 1)}
    head = by.get("head")
    if head:
        out["head"] = head.get("head")
        out["features"] = head.get("features")
    attr = {k: v for k, v in by.items() if k.startswith("attr_")}
    if attr:
        fields = ("decode", "images_per_s", "image_images_per_s", "model_only_images_per_s")
        out["attribute"] = {k: {f: v.get(f) for f in fields} for k, v in attr.items()}
        for v in out["attribute"].values():
            if v["model_only_images_per_s"] and v["images_per_s"]:
                v["end_to_end_over_model"] = round(v["images_per_s"] / v["model_only_images_per_s"], 3)
    proj: dict[str, float] = {}
    if gen:
        proj["generation_s"] = PRESET["generated_images"] / gen["toolkit"]["images_per_s"]
    feats = (head or {}).get("features") or {}
    rates = [v for k, v in feats.items() if k.startswith("extract_") and k.endswith("_img_s")]
    if rates:
        proj["features_s"] = PRESET["models"] * PRESET["images_per_model"] / max(rates)
    rates = [v.get("images_per_s") or 0 for v in attr.values() if v.get("bench") == "attribute"]
    if rates and max(rates):
        proj["attribution_s"] = PRESET["models"] * PRESET["images_per_model"] / max(rates)
    heads = (head or {}).get("head") or {}
    times = [v for k, v in heads.items() if k.startswith("train_head_") and k.endswith("_s")]
    if times:
        proj["heads_s"] = PRESET["head_fits"] * min(times)
    if proj:
        proj["total_s"] = sum(proj.values())
        out["projection"] = {"assumptions": PRESET, **{k: round(v, 1) for k, v in proj.items()}}
    return out


def main(path: str) -> int:
    """Print the summary of one results file as JSON."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(json.dumps(summarize(rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

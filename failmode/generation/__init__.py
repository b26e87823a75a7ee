"""Debug-image generation: sample plans, diffusers rendering, resumable rank-assigned shards, quality filter,
presets (`builders/`) and the `build` orchestration.

    gen = DiffusersGenerator("stable-diffusion-v1-5/stable-diffusion-v1-5")      # failmode.generation.render
    modes = modes_from_json(read_json("modes.json"), k=3)                        # a model's failure modes
    names = load_vocabulary("cifar10").label_names()                             # the dataset's class names
    settings = GenerationSettings()                                              # SD 1.5, 25 steps, 512 px
    rows = build_plan([modes], settings, generator_id=gen.ident)                 # the seeded sample plan
    info = DatasetInfo(name="my-debug-set", version="1.0.0", class_names=names)
    generate_dataset(rows, "out/ds", gen, info, settings)                        # plan, shards, manifest, card
"""

from failmode.generation.plan import (
    GenerationSettings,
    ModeSet,
    PlanRow,
    attempt_seed,
    baseline_modes,
    build_plan,
    derive_seed,
    merge_modes,
    modes_from_json,
    plan_path,
    read_plan,
    read_plan_of,
    write_plan,
)
from failmode.generation.presets import Preset, list_presets, load_preset
from failmode.generation.run import (
    DatasetInfo,
    GenerationResult,
    RunOptions,
    all_shards_done,
    generate_dataset,
    make_manifest,
    save_plan,
)
from failmode.generation.shards import BatchState, ShardRun, assign, shard_jobs, task_slot

__all__ = [
    "BatchState", "DatasetInfo", "GenerationResult", "GenerationSettings", "ModeSet", "PlanRow", "Preset", "RunOptions",
    "ShardRun", "all_shards_done", "assign", "attempt_seed", "baseline_modes", "build_plan", "derive_seed", "generate_dataset",
    "list_presets", "load_preset", "make_manifest", "merge_modes", "modes_from_json", "plan_path", "read_plan",
    "read_plan_of", "save_plan", "shard_jobs", "task_slot", "write_plan",
]

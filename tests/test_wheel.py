"""The wheel is the product: built from the tree, installed into a fresh environment outside the repository, it holds
every data file the code reads and runs `failmode build`, `failmode evaluate` and `datasets.load_dataset`.

The fresh environment gets only the wheel (`pip install --no-deps --no-index`); its heavy dependencies (torch, timm,
diffusers, datasets, ...) come from the test's own environment through one `.pth` line naming that environment's
site-packages, added after the install. Installing them anew would download about 6 GB per run. A `.pth` line only
adds a directory to sys.path: the `.pth` files inside that directory are not processed, so an editable install of
failmode there (its import finder is registered by such a file) is not picked up, and the test checks that
`failmode` and its data resolve to the wheel's copy.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import failmode

REPO = Path(failmode.__file__).resolve().parents[1]
MODEL = "tf_efficientnet_lite0"
#: what the wheel is built from: the tree without version control, environments, outputs and caches
IGNORED = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")

#: the world stage of the demo, reduced: export the world, write the preset and the commands that build and evaluate
WORLD_SCRIPT = """
import dataclasses, shlex, sys
from importlib import resources
from pathlib import Path
import failmode, failmode.cards, failmode.evaluate
print(failmode.__file__, failmode.evaluate.__path__[0], resources.files("failmode.cards") / "citation.bib")
from failmode.evaluate.pipeline import DebugSpec, EvalSpec
from failmode.generation.presets import load_preset
from failmode.io import write_json
from failmode.options import FeatureOptions, SplitSpec
from failmode.world import build_world
from failmode.world.demo import DemoConfig, Paths, commands, demo_preset
from failmode.world.export import export_world

c = DemoConfig.defaults(seed=1, per_class={"train": 20, "debug": 20, "test": 5}, image_size=64, n_exemplars=8,
                        images_per_mode=3, images_per_mode_sweep=[3], lambdas=[0.5], epochs=30, grid_examples=2)
paths = Paths(Path(sys.argv[1]))
paths.out.mkdir(parents=True, exist_ok=True)
world = build_world(c.world, c.seed, per_class=c.per_class, image_size=c.image_size)
export_world(world, paths.world)
preset_path = paths.out / "preset.json"
write_json(preset_path, demo_preset(c, world, paths))
model = load_preset(preset_path).models[0]
spec = EvalSpec(dataclasses.replace(model, head="train"), SplitSpec(str(paths.world), split_seed=c.seed),
                DebugSpec(str(paths.dataset), group_column="context", common_column="common"),
                FeatureOptions(device="cpu", cache_dir=str(paths.cache)))
(paths.out / "commands.sh").write_text("\\n".join(shlex.join(cmd) for cmd in commands(paths, preset_path, spec, c)))
"""

LOAD_SCRIPT = """
import sys
import datasets
ds = datasets.load_dataset(sys.argv[1], sys.argv[2], split="train")
first = next(iter(datasets.load_dataset(sys.argv[1], sys.argv[2], split="train", streaming=True)))
print(ds.num_rows, first["context"] == ds[0]["context"], ds.features["label"].names[ds[0]["label"]] == ds[0]["class_name"])
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _package_data(root: Path) -> set[str]:
    """Every non-.py file of the failmode package as the tree holds it (symlinked folders followed)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root / "failmode", followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if not name.endswith((".py", ".pyc")):
                out.add((Path(dirpath) / name).relative_to(root).as_posix())
    return out


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_builds_evaluates_and_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", FAILMODE_CACHE_DIR=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "dist"), str(src)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("failmode-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _package_data(src) <= names, f"data files missing from the wheel: {sorted(_package_data(src) - names)}"
    assert {"failmode/cards/citation.bib", "failmode/cards/dataset_card.md", "failmode/builders/imagenet-bg-debug.json",
            "failmode/evaluate/suite.py"} <= names

    fresh = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], tmp_path, env)
    python, failmode_cli = fresh / "bin" / "python", fresh / "bin" / "failmode"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp_path,
         env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     env).strip())
    (site / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"  # outside the repository and its copy: nothing of the tree on sys.path
    work.mkdir()
    out = work / "demo"
    where = _run([str(python), "-c", WORLD_SCRIPT, str(out)], work, env).split()[:3]
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in where), where  # the wheel's copy
    build, evaluate = (shlex.split(line) for line in (out / "commands.sh").read_text().splitlines())
    assert build[:2] == ["failmode", "build"] and evaluate[:2] == ["failmode", "evaluate"]
    _run([str(failmode_cli), *build[1:]], work, env)
    _run([str(failmode_cli), *evaluate[1:]], work, env)
    results = (out / "evaluate" / "results.jsonl").read_text().splitlines()
    # original, retrain, 4 debug configs (the model's top-k config, its evidence-weighted sibling, random-context,
    # class-only), one lambda, one images-per-mode point
    assert len(results) == 8
    assert "Dataset fashion-scenes-debug v1.0.0" in (out / "dataset" / "README.md").read_text()  # citation.bib
    rows, same, named = _run([str(python), "-c", LOAD_SCRIPT, str(out / "dataset"), MODEL], work, env).split()[-3:]
    assert int(rows) > 0 and same == named == "True"

"""Argument helpers and names shared by several commands (no heavy imports)."""

from __future__ import annotations

import argparse


def add_bad_image_argument(p: argparse.ArgumentParser) -> None:
    """--on-bad-image error|skip (failmode.data.sources.BadImages)."""
    p.add_argument("--on-bad-image", default="error", choices=("error", "skip"),
                   help="an image that cannot be decoded: error (default: stop, naming it) or skip (leave it out; "
                        "the outputs record how many and which)")


def add_write_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--write incremental|overwrite of the commands that write a dataset folder (build, generate); --mode, its old
    name, is kept for one release."""
    choices = ["incremental", "overwrite"]
    p.add_argument("--write", choices=choices, default="incremental",
                   help="incremental (default): keep the shards already written for this plan and render only the "
                        "missing ones (a rerun resumes); overwrite: delete the folder's previous build (shards, "
                        "manifest, card) and render everything again (old name: --mode, accepted for one release)")
    add_renamed(p, "--mode", "--write", dest="write", choices=choices)


def add_task_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--task-index / --num-tasks: this process's task of a job array (--shard-index / --num-shards, their old
    names, are kept for one release)."""
    p.add_argument("--task-index", dest="task", type=int, metavar="I",
                   help="this task of the job array, 0..N-1 (e.g. $SLURM_ARRAY_TASK_ID; old name: --shard-index)")
    p.add_argument("--num-tasks", dest="tasks", type=int, metavar="N",
                   help="number of tasks of the job array (old name: --num-shards)")
    add_renamed(p, "--shard-index", "--task-index", dest="task", type=int)
    add_renamed(p, "--num-shards", "--num-tasks", dest="tasks", type=int)


class RenamedFlag(argparse.Action):
    """A flag's old name, kept for one release: it sets the new flag's value and notes the rename, which
    `log_renamed` logs once the command runs (logging is set up after parsing)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: object) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        note_renamed(namespace, str(option_string), self.new)


def note_renamed(args: argparse.Namespace, old: str, new: str) -> None:
    """Note that the command line used `old` (a flag's old name, or an old spelling of a value) for `new`."""
    args.renamed_flags = [*getattr(args, "renamed_flags", []), (old, new)]


def add_renamed(p: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, **kwargs: object) -> None:
    """Flag `old` as an alias of `new` for one release (hidden from --help; `log_renamed` names the new flag)."""
    p.add_argument(old, action=RenamedFlag, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   **kwargs)  # type: ignore[arg-type]


def log_renamed(args: argparse.Namespace) -> None:
    """One log line per old flag name used on this command line, naming its new name."""
    import logging

    for old, new in getattr(args, "renamed_flags", []):
        logging.getLogger("failmode.commands").warning("%s is renamed %s; the old name is accepted for one more "
                                                        "release", old, new)


def shipped_presets() -> list[str]:
    """Names of the presets shipped in builders/ (read without importing the generation package)."""
    from pathlib import Path

    return sorted(f.stem for f in (Path(__file__).resolve().parents[1] / "builders").glob("*.json"))


def add_dataset_folder_argument(p: argparse.ArgumentParser) -> None:
    """DIR: a dataset folder written by `failmode build` / `failmode generate` (push, finalize)."""
    p.add_argument("dir", metavar="DIR", help="dataset folder written by 'failmode build' / 'failmode generate'")


def add_labels_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--labels FILE: the labels file of a flat image folder (`failmode.data.spec.with_labels` attaches it)."""
    p.add_argument("--labels", metavar="FILE",
                   help="labels file of a flat image folder: a file,label CSV (class names or WordNet ids) or Kaggle's "
                        "LOC_val_solution.csv (default: labels.csv in the folder, or LOC_<split>_solution.csv beside it)")

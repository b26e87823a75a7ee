"""The dataset card (README.md): YAML header for the Hub plus a body rendered from `cards/dataset_card.md`."""

from __future__ import annotations

import json
from importlib import resources
from string import Template
from typing import Any

import yaml

from failmode.dataset import layout
from failmode.dataset.manifest import REPO_ID_RE, Manifest
from failmode.dataset.sample import CODECS
from failmode.dataset.summary import ConfigSummary
from failmode.errors import ValidationError

BASE_TAGS = ("synthetic", "failmode", "debug-dataset", "failure-modes")
#: the Hub's task id for single-label classification (`task_ids` in the card's metadata)
TASK_IDS = ("multi-class-image-classification",)


def card_tags(manifest: Manifest) -> list[str]:
    """The tags of a dataset: failmode's, "stable-diffusion" when a diffusion model made the images, the preset's."""
    generator = f"{manifest.generator.get('id', '')} {manifest.generator.get('ident', '')}".lower()
    made_by = ["stable-diffusion"] if "diffusion" in generator else []
    return list(dict.fromkeys([*BASE_TAGS, *made_by, *manifest.tags]))


def card_template(name: str) -> str:
    """Text of a template shipped in `failmode.cards` (the top-level `cards/` folder)."""
    return resources.files("failmode.cards").joinpath(name).read_text(encoding="utf-8")


def licenses() -> dict[str, dict[str, str]]:
    """Known licence ids -> name, url and the sentence the card prints."""
    return json.loads(card_template("licenses.json"))


def render_card(manifest: Manifest, summaries: dict[str, ConfigSummary]) -> str:
    """The full README.md text; deterministic for equal inputs."""
    lic = licenses().get(manifest.license)
    if lic is None:
        known = ", ".join(sorted(licenses()))
        raise ValidationError(f"manifest: unknown license {manifest.license!r} (known: {known})")
    default = summaries[manifest.default()]
    split = "train" if "train" in default.splits else next(iter(default.splits))
    values = {
        "yaml_header": yaml_header(manifest, summaries),
        "title": manifest.pretty_name or manifest.name,
        "description": manifest.description or f"Debug images for classifiers trained on "
                                                f"{manifest.source_dataset or 'the source dataset'}.",
        "version": manifest.version, "tag": manifest.tag, "failmode_version": manifest.failmode_version,
        "image_format_upper": manifest.image_format.upper(), "image_ext": CODECS.get(manifest.image_format).ext,
        "configs_table": _configs_table(summaries), "columns_table": _columns_table(summaries),
        "vocabulary": _describe(manifest.vocabulary, "not recorded"),
        "attribution": _describe(manifest.attribution, "not recorded"),
        "generator": _describe(manifest.generator, "not recorded"),
        "seeds": _describe(manifest.seeds, "each image's seed is the `seed` column"),
        "filters": _filters(manifest.generation),
        "generation_json": json.dumps(manifest.generation, indent=2, sort_keys=True, ensure_ascii=False),
        "plan_sha256": manifest.plan_sha256 or "not recorded",
        "grids": _grids(summaries), "num_classes": len(manifest.class_names),
        "counts_table": _counts_table(manifest, summaries),
        **_recipe_values(manifest, summaries, default.name, split),
        "license_text": f"{lic['text']}" + (f" Licence: [{lic['name']}]({lic['url']})." if lic["url"] else ""),
        "citation": (manifest.citation or Template(card_template("citation.bib")).substitute(
            failmode_version=manifest.failmode_version, name=manifest.name, version=manifest.version)).strip(),
    }
    return Template(card_template("dataset_card.md")).substitute(values)


def _recipe_values(manifest: Manifest, summaries: dict[str, ConfigSummary], config: str,
                   split: str) -> dict[str, str]:
    """The loading recipes' values: from the Hub at the version's tag when the repo id is known, else from the
    dataset's own folder (the recipes then run from inside it)."""
    images = [c.name for c in summaries.values() if c.has_images]
    repo, tag = manifest.repo_id, manifest.tag
    num_shards = summaries[config].spec.splits[split]
    if repo:
        hub, local = "from huggingface_hub import snapshot_download\n", (
            f'local = snapshot_download("{repo}", repo_type="dataset", revision="{tag}")')
        stream = (f"\nOr stream the shards from the Hub without a copy: `https://huggingface.co/datasets/{repo}/"
                  f"resolve/{tag}/wds/{config}/{split}-{{00000..{num_shards - 1:05d}}}-of-{num_shards:05d}.tar`.\n")
        heads = {"datasets_head": "from datasets import load_dataset",
                 "timm_head": f"import timm.data\n{hub}\n{local}",
                 "wds_head": f"import glob\n\nimport webdataset as wds\n{hub}\n{local}"}
    else:
        local = 'local = os.path.abspath(".")  # the dataset\'s folder (the one holding this README.md)'
        stream = ""
        heads = {"datasets_head": f"import os\n\nfrom datasets import load_dataset\n\n{local}",
                 "timm_head": f"import os\n\nimport timm.data\n\n{local}",
                 "wds_head": f"import glob\nimport os\n\nimport webdataset as wds\n\n{local}"}
    return {
        **heads, "source": f'"{repo}"' if repo else "local", "revision_arg": f', revision="{tag}"' if repo else "",
        "name": manifest.name, "config": config, "split": split, "configs_list": ", ".join(f"`{c}`" for c in images),
        "configs_py": ", ".join(f'"{c}"' for c in images), "stream_hint": stream,
        "local_hint": ", e.g. from `snapshot_download` as above" if repo else ", the one holding this README.md",
        "shard_counts": ", ".join(f"`{c}`: {sum(summaries[c].spec.splits.values())}" for c in images),
    }


def yaml_header(manifest: Manifest, summaries: dict[str, ConfigSummary]) -> str:
    """The card's YAML metadata: licence, task categories, tags, one `configs:` entry per config, `dataset_info`."""
    total = sum(s.num_samples for c in summaries.values() if c.has_images for s in c.splits.values())
    default = manifest.default()
    configs, infos = [], []
    for name, c in summaries.items():
        entry: dict[str, Any] = {"config_name": name}
        if name == default:
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"data/{name}/{s}-*.parquet"} for s in c.splits]
        configs.append(entry)
        infos.append({
            "config_name": name, "features": c.features.yaml_features(),
            "splits": [{"name": s, "num_bytes": v.num_bytes, "num_examples": v.num_samples}
                       for s, v in c.splits.items()],
            "download_size": sum(v.download_size for v in c.splits.values()),
            "dataset_size": sum(v.num_bytes for v in c.splits.values()),
        })
    header = {
        "license": manifest.license, "pretty_name": manifest.pretty_name or manifest.name,
        "version": manifest.version,
        "task_categories": ["image-classification"], "task_ids": list(TASK_IDS), "language": ["en"],
        "annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
        "tags": card_tags(manifest),
        "size_categories": [_size_category(total)],
        "source_datasets": [manifest.source_dataset],
        "configs": configs, "dataset_info": infos,
    }
    if not REPO_ID_RE.match(manifest.source_dataset):  # a local folder is not a Hub source dataset
        del header["source_datasets"]
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)


def parse_card_header(text: str, where: str = "README.md") -> dict[str, Any]:
    """The YAML header of a card as a dict; ValidationError when it is missing or does not parse."""
    if not text.startswith("---\n"):
        raise ValidationError(f"{where}: no YAML header (the card must start with '---')")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValidationError(f"{where}: the YAML header is not closed by '---'")
    try:
        data = yaml.safe_load(text[4:end])
    except yaml.YAMLError as e:
        raise ValidationError(f"{where}: YAML header does not parse: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"{where}: YAML header is not a mapping")
    return data


def _filters(generation: dict[str, Any]) -> str:
    """The quality filter and safety checker in words, with their counts (from the generation stats)."""
    q = generation.get("quality") or {}
    if generation.get("safety_checker"):
        checker = f"on, {q.get('unsafe_flagged', 0)} images flagged and re-rendered with the next seed"
    else:
        checker = "off (debug data; no images were screened)"
    if not q:
        return f"Quality filter: not recorded. Safety checker: {checker}."
    scorer = generation.get("quality_filter")
    thresholds = generation.get("quality_thresholds") or {}
    limits = ", ".join(f"{k} >= {v}" for k, v in sorted(thresholds.items()) if v is not None) or "no threshold"
    described = f"{scorer} ({limits})" if scorer else "off"
    return (f"Quality filter: {described}; {q.get('count', 0)} of {q.get('planned', 0)} planned images "
            f"written, {q.get('quality_dropped', 0)} dropped by the filter, {q.get('substituted', 0)} replaced from "
            f"the seed reserve, {q.get('unfilled', 0)} left unfilled. Safety checker: {checker}.")


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    return next((label for b, label in bounds if n < b), "1M<n<10M")


def _describe(info: dict[str, Any], empty: str) -> str:
    if not info:
        return empty
    return "; ".join(f"{k}: {_inline(v)}" for k, v in sorted(info.items()))


def _inline(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    if "\n" not in text and len(text) < 120:
        return f"`{text}`"
    return "\n\n  ```\n  " + text.replace("\n", "\n  ") + "\n  ```\n"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _configs_table(summaries: dict[str, ConfigSummary]) -> str:
    rows = [[f"`{c.name}`", c.spec.kind, f"`{c.spec.source_model}`" if c.spec.source_model else "",
             ", ".join(f"{s}: {v.num_samples}" for s, v in c.splits.items()), c.spec.description]
            for c in summaries.values()]
    return _table(["config", "kind", "source model", "samples", "description"], rows)


def _columns_table(summaries: dict[str, ConfigSummary]) -> str:
    cols: dict[str, str] = {}
    for c in summaries.values():
        for name, dtype in c.features.columns:
            cols.setdefault(name, dtype)
    return _table(["column", "type"], [[f"`{n}`", t] for n, t in cols.items()])


def _grids(summaries: dict[str, ConfigSummary]) -> str:
    parts = [f"**{c.name}**\n\n![examples of {c.name}](assets/{layout.grid_path('', c.name).name})"
             for c in summaries.values() if c.has_images]
    return "\n\n".join(parts) or "No image configs."


def _counts_table(manifest: Manifest, summaries: dict[str, ConfigSummary]) -> str:
    columns = [(c.name, s, v) for c in summaries.values() if c.has_images for s, v in c.splits.items()]
    rows = [[i, name, *(v.label_counts.get(i, 0) for _, _, v in columns)]
            for i, name in enumerate(manifest.class_names)]
    return _table(["label", "class", *(f"{c}/{s}" for c, s, _ in columns)], rows)

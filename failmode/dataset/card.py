"""The dataset card (README.md): YAML header for the Hub plus a body rendered from `cards/dataset_card.md`."""

from __future__ import annotations

import hashlib
import html
import json
import re
from importlib import resources
from pathlib import Path
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


#: licences that only Stable Diffusion models carry (their images get the `stable-diffusion` tag)
SD_LICENSES = ("creativeml-openrail-m", "openrail++")
#: settings that belong to the CLIP attributor only (left out of the card for any other attributor)
CLIP_FIELDS = ("clip_model", "pretrained")


def made_by_diffusion(manifest: Manifest) -> bool:
    """True when a diffusers pipeline rendered the images (its ident is `diffusers:...`), not a stand-in."""
    return str(manifest.generator.get("ident", "")).startswith("diffusers:")


def card_tags(manifest: Manifest) -> list[str]:
    """The tags of a dataset: failmode's; "diffusers" when a diffusion model made the images and "stable-diffusion"
    when that model is a Stable Diffusion one (its licence says so); the preset's."""
    made_by = []
    if made_by_diffusion(manifest):
        made_by = ["diffusers", *(["stable-diffusion"] if manifest.license in SD_LICENSES else [])]
    return list(dict.fromkeys([*BASE_TAGS, *made_by, *(t for t in manifest.tags if t != "stable-diffusion")]))


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
    attribution = {k: v for k, v in manifest.attribution.items()
                   if manifest.attribution.get("attributor", "clip") == "clip" or k not in CLIP_FIELDS}
    generator = {k: v for k, v in manifest.generator.items() if k not in ("license_note",)}
    note = manifest.generator.get("license_note")
    values = {
        "yaml_header": yaml_header(manifest, summaries),
        "title": html.escape(public(manifest.pretty_name or manifest.name), quote=False),
        "description": html.escape(public(manifest.description) or f"Debug images for classifiers trained on "
                                   f"{manifest.source_dataset or 'the source dataset'}.", quote=False),
        "version": manifest.version, "tag": manifest.tag, "failmode_version": manifest.failmode_version,
        "made_by": _made_by(manifest),
        "image_format_upper": manifest.image_format.upper(), "image_ext": CODECS.get(manifest.image_format).ext,
        "configs_table": _configs_table(summaries), "columns_table": _columns_table(summaries),
        "vocabulary": _describe(manifest.vocabulary, "not recorded"),
        "attribution": _describe(attribution, "not recorded"),
        "generator": _describe(generator, "not recorded"),
        "seeds": _describe(manifest.seeds, "each image's seed is the `seed` column"),
        "filters": _filters(manifest.generation),
        "generation_json": _fenced(json.dumps(public(manifest.generation), indent=2, sort_keys=True,
                                              ensure_ascii=False), "json"),
        "plan_sha256": manifest.plan_sha256 or "not recorded",
        "grids": _grids(summaries), "num_classes": len(manifest.class_names),
        "counts_table": _counts_table(manifest, summaries),
        **_recipe_values(manifest, summaries, default.name, split),
        "license_text": html.escape(note, quote=False) if note else (
            f"{lic['text']}" + (f" Licence: [{lic['name']}]({lic['url']})." if lic["url"] else "")),
        "citation": (manifest.citation or Template(card_template("citation.bib")).substitute(
            failmode_version=manifest.failmode_version, name=manifest.name, version=manifest.version)).strip(),
    }
    return Template(card_template("dataset_card.md")).substitute(values)


def _recipe_values(manifest: Manifest, summaries: dict[str, ConfigSummary], config: str,
                   split: str) -> dict[str, str]:
    """The loading recipes: each as it runs in the dataset's own folder and, when the repo id is known, from the Hub
    at the version's tag (`_two_forms`)."""
    images = [c.name for c in summaries.values() if c.has_images]
    repo, tag, name = manifest.repo_id, manifest.tag, manifest.name
    num_shards = summaries[config].spec.splits[split]
    folder = 'local = os.path.abspath(".")  # the dataset\'s folder (the one holding this README.md)'
    hub = (f'local = snapshot_download("{repo}", repo_type="dataset", revision="{tag}")  # a local copy of the '
           f'tag')
    configs_py = ", ".join(f'"{c}"' for c in images)

    def datasets_code(source: str, revision: str, head: str) -> str:
        return (f"{head}\nfor config in [{configs_py}]:\n"
                f'    ds = load_dataset({source}, config, split="{split}"{revision})\n'
                '    print(config, ds.num_rows, ds.features["label"].names[ds[0]["label"]], ds[0]["context"])\n'
                f'stream = load_dataset({source}, "{config}", split="{split}"{revision}, streaming=True)\n'
                'print(next(iter(stream))["prompt"])\n'
                'del stream\n'
                "gc.collect()  # joins the half-read stream's reader threads now, not at exit (apache/arrow#45214)")

    timm_body = (f'ds = timm.data.create_dataset(f"hfds/{{local}}/data/{config}", root=None, split="{split}")\n'
                 f'train = timm.data.create_dataset("wds/{name}", root=f"{{local}}/wds/{config}", split="{split}",\n'
                 '                                 is_training=True, batch_size=64)\n'
                 f'once = timm.data.create_dataset("wds/{name}", root=f"{{local}}/wds/{config}", split="{split}")\n'
                 'print(len(ds), ds[0][1], len(train), sum(1 for _ in once))')
    wds_body = (f'urls = sorted(glob.glob(f"{{local}}/wds/{config}/{split}-*.tar"))\n'
                'ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")'
                f'.to_tuple("{CODECS.get(manifest.image_format).ext}", "cls", "json")\n'
                'loader = wds.WebLoader(ds, batch_size=None, num_workers=2)\n'
                'print(sum(1 for _ in loader), "samples")')
    snapshot = "from huggingface_hub import snapshot_download\n"
    stream = (f"\nOr stream the shards from the Hub without a copy: `https://huggingface.co/datasets/{repo}/"
              f"resolve/{tag}/wds/{config}/{split}-{{00000..{num_shards - 1:05d}}}-of-{num_shards:05d}.tar`.\n"
              if repo else "")
    return {
        "datasets_code": _two_forms(
            datasets_code("local", "", f"import gc\nimport os\n\nfrom datasets import load_dataset\n\n{folder}\n"),
            datasets_code(f'"{repo}"', f', revision="{tag}"', "import gc\n\nfrom datasets import load_dataset\n") if repo else "",
            tag),
        "timm_code": _two_forms(f"import os\n\nimport timm.data\n\n{folder}\n{timm_body}",
                                f"import timm.data\n{snapshot}\n{hub}\n{timm_body}" if repo else "", tag),
        "wds_code": _two_forms(f"import glob\nimport os\n\nimport webdataset as wds\n\n{folder}\n{wds_body}",
                               f"import glob\n\nimport webdataset as wds\n{snapshot}\n{hub}\n{wds_body}"
                               if repo else "", tag),
        "name": name, "config": config, "split": split, "configs_list": ", ".join(f"`{c}`" for c in images),
        "stream_hint": stream,
        "local_hint": ", the one holding this README.md" + (", or the `snapshot_download` copy above" if repo else ""),
        "shard_counts": ", ".join(f"`{c}`: {sum(summaries[c].spec.splits.values())}" for c in images),
    }


def _two_forms(local: str, hub: str, tag: str) -> str:
    """A recipe's python block as it runs in the dataset's folder and, when given, its Hub form."""
    block = f"```python\n{local}\n```"
    if not hub:
        return block
    return (f"In the dataset's folder (the one holding this README.md):\n\n{block}\n\n"
            f"From the Hub, at this version's tag `{tag}`:\n\n```python\n{hub}\n```")


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
    scorer = public(generation.get("quality_filter"))
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
    """`key: value` pairs of a manifest record, local paths named by `local_name`, empty values left out."""
    items = [(k, v) for k, v in sorted(public(info).items()) if v not in ("", None, [], {})]
    if not items:
        return empty
    values = [(k, _inline(v)) for k, v in items]
    return "; ".join(f"{k}:{'' if v.startswith(chr(10)) else ' '}{v}" for k, v in values)


def _inline(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    if "\n" not in text and len(text) < 120:
        return _code(text)
    return "\n\n  " + _fenced(text).replace("\n", "\n  ") + "\n"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; cells are markdown already (user text through `md_text`, code through `_cell_code`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell_code(text: str) -> str:
    """A code span inside a table cell (GFM splits cells at a pipe even in code, unless it is escaped)."""
    return _code(text).replace("|", "\\|")


def _configs_table(summaries: dict[str, ConfigSummary]) -> str:
    rows = [[_cell_code(c.name), c.spec.kind, _cell_code(public(c.spec.source_model)) if c.spec.source_model else "–",
             ", ".join(f"{s}: {v.num_samples}" for s, v in c.splits.items()), md_text(public(c.spec.description)) or "–"]
            for c in summaries.values()]
    return _table(["config", "kind", "source model", "samples", "description"], rows)


def _columns_table(summaries: dict[str, ConfigSummary]) -> str:
    cols: dict[str, str] = {}
    for c in summaries.values():
        for name, dtype in c.features.columns:
            cols.setdefault(name, dtype)
    return _table(["column", "type"], [[_cell_code(n), t] for n, t in cols.items()])


def _grids(summaries: dict[str, ConfigSummary]) -> str:
    parts = [f"**{c.name}**\n\n![examples of {c.name}](assets/{layout.grid_path('', c.name).name})"
             for c in summaries.values() if c.has_images]
    return "\n\n".join(parts) or "No image configs."


def _counts_table(manifest: Manifest, summaries: dict[str, ConfigSummary]) -> str:
    columns = [(c.name, s, v) for c in summaries.values() if c.has_images for s, v in c.splits.items()]
    rows = [[i, md_text(name), *(v.label_counts.get(i, 0) for _, _, v in columns)]
            for i, name in enumerate(manifest.class_names)]
    return _table(["label", "class", *(f"{c}/{s}" for c, s, _ in columns)], rows)


#: a local path inside a recorded value: starts with /, ~/, ./ or ../, not inside a word or a URL's `://host/path`
#: (an ident such as `clip:name//abs/path.pt` holds one after its `/`)
_LOCAL_PATH = re.compile(r"(?<![\w.~-])(?<!:/)(?:~|\.{1,2})?/(?!/)[^\s`'\"),;|<>]+")


def local_name(path: str) -> str:
    """A local file or folder as a card names it: its name and a content hash (a file's SHA-256; a folder's over
    its files' relative paths, sizes and JSON configs, as `pipeline_ident` hashes a diffusers folder), never the
    machine's path; "(local)" when it is not on this machine any more."""
    p = Path(path).expanduser()
    name = p.name or path.strip("/") or "local"
    h = hashlib.sha256()
    if p.is_file():
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    elif p.is_dir():
        for q in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(q.relative_to(p).as_posix().encode())
            h.update(q.read_bytes() if q.suffix == ".json" else str(q.stat().st_size).encode())
    else:
        return f"{name} (local)"
    return f"{name}@sha256:{h.hexdigest()[:12]}"


def public(value: Any) -> Any:
    """`value` (str, list or dict, recursively) with every local path replaced by its `local_name`."""
    if isinstance(value, str):
        return _LOCAL_PATH.sub(lambda m: local_name(m.group(0)), value)
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public(v) for v in value]
    return value


def md_text(value: Any) -> str:
    """User text (class names, contexts, descriptions) as literal text in markdown and HTML: `<`, `>`, `&` as
    entities, markdown's markup characters and table pipes backslash-escaped, newlines as spaces."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", text)


def _code(text: str) -> str:
    """`text` as an inline code span that its own backticks cannot close."""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or len(ticks) > 1 else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fenced(text: str, lang: str = "") -> str:
    """`text` in a fenced code block whose fence no line of `text` can close."""
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`{3,}", text)), default=0) + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _made_by(manifest: Manifest) -> str:
    """What made the images, in words: a diffusion model, or the named (stand-in) generator."""
    if made_by_diffusion(manifest):
        return "generated by a text-to-image diffusion model"
    ident = str(manifest.generator.get("ident", ""))
    name = _code(public(str(manifest.generator.get("id") or ident or "unknown")))
    if "stand-in" in ident:
        return f"made by the {name} generator, a stand-in, not a diffusion model"
    return f"made by the {name} generator"

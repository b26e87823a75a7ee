"""Options objects shared by the library and the commands, one per concern (light: no heavy import, so commands can
add their flags and parse them):

- `ModelSpec` and `SplitSpec`: a classifier (timm name, weights, head, preprocessing) and the dataset splits it is
  run on (dataset, splits, per-class recipe, split seed); `failmode.models.setup.open_classifier` turns them into a
  ready classifier for `mine`, `evaluate`, `build` (a preset's `models` entries are ModelSpecs) and `discover`.
- `FeatureOptions`: how images become frozen features (device, batch, precision, loader workers, decoder, cache);
  `failmode mine`, `evaluate`, `build`, and the image side of `attribute`.
- `AttributionOptions`: which attributor scores failures against contexts (CLIP's model and weights, or another
  registered attributor, with its options); `attribute`, `slices`, `discover` and a preset's `attribution` section.
- `RenderOptions`: how a diffusers pipeline renders (device, precision, kernel batch, scheduler, compilation, the
  safety checker); `generate`, `build`, `slices`, `discover` and a preset's `render` section.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.errors import UsageError, ValidationError
from failmode.registry import Registry
from failmode.typed import arg_type, bounded, check_ranges

DECODE_CHOICES = ("auto", "cpu", "hybrid", "gpu")


def device_type(text: str) -> str:
    """The argparse `type` of every --device flag: a device this machine does not have (`cuda` without a GPU,
    `cuda:7`, `mps`, `nonsense`) is a one-line usage error at parse time, before any data loads (torch is imported
    only when the flag is given)."""
    from failmode.runtime import device_arg

    return device_arg(text)


#: the word for random weights: of a classifier (`--weights none`, a preset's `models[].weights`) and of CLIP
#: (`--clip-pretrained none`; null in a preset)
RANDOM_WEIGHTS = "none"


def weights_or_none(weights: str | None) -> str | None:
    """`weights` as the loaders take them: None (random weights) for `RANDOM_WEIGHTS`, else unchanged; the one place
    the word is converted (commands, presets, model keys and revisions alike)."""
    return None if weights == RANDOM_WEIGHTS else weights


#: how a model config's per-class image budget is spread (failmode.generation.plan, docs/budget-policies.md): top-k,
#: the paper's rule, or evidence-weighted, by the attributed seed failures
BUDGET_POLICIES = ("top-k", "evidence-weighted")
BUDGET_HELP = ("budget policies of the per-model configs, comma-separated: top-k (the paper's rule: images_per_mode "
               "images on each of the k most frequent attributed contexts) and/or evidence-weighted (the same images "
               "per class spread over the vocabulary by the attributed seed failures); the first makes the model's "
               "config, each further one a sibling config <model>-<policy> (default: the preset's, top-k)")


def budget_list(text: str) -> list[str]:
    """`--budget top-k,evidence-weighted` as a list of known, distinct policies (an argparse type: a bad value is
    argparse's one-line usage error)."""
    policies = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in policies if p not in BUDGET_POLICIES]
    if not policies or unknown or len(set(policies)) != len(policies):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct policies out of {', '.join(BUDGET_POLICIES)}")
    return policies
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """One classifier: a timm name, its weights, its head and its preprocessing (a preset's `models` entry)."""

    id: str
    weights: str | None = "timm"  # "timm" (pretrained), "none", a state-dict file or an offline provider
    head: str | None = None  # None: the model's own classifier; "train": fitted on the train split; or a head file
    image_size: int | None = bounded(None, 8, 4096)  # override the model's input size
    crop_pct: float | None = bounded(None, 0, 1, lo_open=True)  # override its centre-crop fraction (1.0: no crop)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any) -> None:
        """--weights, --head, --image-size, --crop-pct (the model name is each command's own flag)."""
        p.add_argument("--weights", default="timm",
                       help="timm (pretrained), none, a state-dict file or an offline weight provider")
        p.add_argument("--head", help="the model's head on the dataset: 'train' fits one on the train split, or a "
                                      "head file (.safetensors/.npz/.pt with weight and bias, e.g. the "
                                      "head.safetensors mining saved); default: the model's own classifier")
        p.add_argument("--image-size", type=arg_type(ModelSpec, "image_size"), help="override the model's input size")
        p.add_argument("--crop-pct", type=arg_type(ModelSpec, "crop_pct", float),
                       help="override the model's centre-crop fraction (1.0: no border crop)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, model: str) -> ModelSpec:
        """`model` with the flags of `add_arguments`."""
        return cls(model, args.weights, args.head, args.image_size, args.crop_pct)


@dataclass(frozen=True)
class SplitSpec:
    """A dataset and its splits as the paper makes them: the evaluation split (debug + test), the split a head is
    trained on, the per-class recipe (None: the dataset's own) and the split seed."""

    dataset: str = "imagenet-1k"  # a dataset spec (`failmode.data.spec`), with its labels file attached if any
    split: str | None = None  # evaluation split holding the debug and test images (default: the dataset's)
    train_split: str | None = None  # split a head is trained on (default: the dataset's)
    train_per_class: float | None = bounded(None, 0, 1_000_000, lo_open=True)  # train images per class
    debug_per_class: float | None = bounded(None, 0, 1_000_000, lo_open=True)  # a count, or a fraction < 1
    split_seed: int = 0  # seed of the debug/test split and of the seed/heldout halves

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any, split_flag: str = "--split") -> None:
        """`split_flag` (the evaluation split), --train-split, --train-per-class, --debug-per-class, --split-seed
        (the dataset is each command's own flag)."""
        p.add_argument(split_flag, dest="split",
                       help="evaluation split holding the debug and test images (default: the dataset's)")
        p.add_argument("--train-split", help="split a head is trained on (default: the dataset's)")
        p.add_argument("--train-per-class", type=arg_type(SplitSpec, "train_per_class", float),
                       help="override the recipe: train images per class")
        p.add_argument("--debug-per-class", type=arg_type(SplitSpec, "debug_per_class", float),
                       help="override the recipe: debug images per class (a count, or a fraction < 1)")
        p.add_argument("--split-seed", type=int, default=0,
                       help="seed of the debug/test split and the seed/heldout halves (default 0)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, dataset: str) -> SplitSpec:
        """`dataset` (a spec, labels attached) with the flags of `add_arguments`."""
        return cls(dataset, args.split, args.train_split, args.train_per_class, args.debug_per_class, args.split_seed)


@dataclass(frozen=True)
class FeatureOptions:
    """Feature-extraction settings (`failmode.features.extract_features`); None means the device's default."""

    device: str | None = None
    batch_size: int | None = bounded(None, 1, 4096)  # None: 256 on a GPU, 64 on a CPU
    precision: str = "auto"
    num_workers: int | None = bounded(None, 0, 64)  # None: failmode.images.default_workers
    decode: str = "auto"
    cache_dir: str | None = None  # the cache root; features go to cache_dir/features

    def __post_init__(self) -> None:
        try:
            check_ranges(self, "")
        except ValidationError as e:
            raise UsageError(str(e)) from None

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any, batch_default: str = "256 on a GPU, 64 on a CPU") -> None:
        """--device, --batch-size, --precision, --workers, --decode, --cache-dir (`batch_default`: the help's
        words for the default batch of whatever extracts)."""
        p.add_argument("--device", type=device_type, help="cpu, cuda, cuda:1 (default: cuda if available)")
        p.add_argument("--batch-size", type=arg_type(FeatureOptions, "batch_size"),
                       help=f"images per forward pass, 1..4096 (default: {batch_default})")
        p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                       help="precision of the forward passes (auto: bf16/fp16 on a GPU, fp32 on a CPU)")
        p.add_argument("--workers", "--num-workers", dest="num_workers", type=arg_type(FeatureOptions, "num_workers"),
                       help="loader processes decoding images (default: 0 on CPU, up to 8 on a GPU)")
        p.add_argument("--decode", default="auto", choices=DECODE_CHOICES,
                       help="cpu: resize in the workers (the model's exact preprocessing); hybrid: resize on the device; gpu: "
                            "also decode JPEGs there (CUDA only; default auto: hybrid on CUDA, else cpu)")
        p.add_argument("--cache-dir", help="cache folder (default: $FAILMODE_CACHE_DIR or ~/.cache/failmode)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeatureOptions:
        """The options the flags of `add_arguments` set."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def feature_cache(self) -> Path:
        """Where a `FeatureExtractor` caches features: features/ under the cache root (default `default_cache_dir()`)."""
        from failmode.io import default_cache_dir

        return Path(self.cache_dir or default_cache_dir()) / "features"


#: FeatureOptions fields the CLIP attributor reads images with (the cache is attribute_failures' own); given as
#: attributor options they override the flags
CLIP_LOADER_FIELDS = ("device", "batch_size", "precision", "num_workers", "decode")


@dataclass(frozen=True)
class AttributionOptions:
    """How seed failures get their contexts: the registered attributor and, for "clip", its open_clip model and
    weights; `options` are further keyword arguments of the attributor's factory (CLIP's `templates`, say).

    A preset's `attribution` section is one of these, and so are the attributor flags of the commands."""

    attributor: str = "clip"
    clip_model: str = "ViT-B-32"  # open_clip name or JSON config path (attributor "clip")
    pretrained: str | None = "openai"  # open_clip tag or local checkpoint (attributor "clip"); None: random weights
    options: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any) -> None:
        """--attributor, --clip-model, --clip-pretrained, --templates and the repeatable --attributor-option."""
        p.add_argument("--attributor", default="clip", help="registered attributor (default clip)")
        p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model name or config JSON (default ViT-B-32)")
        p.add_argument("--clip-pretrained", default="openai",
                       help="open_clip pretrained tag, local checkpoint, or none for random weights (default openai)")
        p.add_argument("--templates", help="CLIP prompt templates JSON (default: failmode/mining/templates.json)")
        p.add_argument("--attributor-option", "--option", dest="attributor_option", action="append", default=[],
                       metavar="KEY=VALUE", help="extra attributor option (VALUE parsed as JSON when it can be); "
                                                 "repeatable")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AttributionOptions:
        """The options the flags of `add_arguments` set (`--clip-pretrained none`: random weights)."""
        pretrained = weights_or_none(args.clip_pretrained)
        extra = {"templates": args.templates} if args.templates and args.attributor == "clip" else {}
        return cls(args.attributor, args.clip_model, pretrained,
                   extra | parse_options(args.attributor_option, "--attributor-option"))

    def record(self) -> dict[str, Any]:
        """The attributor's own settings, as manifests record them: CLIP's model and weights only for "clip"."""
        clip = {"clip_model": self.clip_model, "pretrained": self.pretrained} if self.attributor == "clip" else {}
        return {"attributor": self.attributor, **clip, **({"options": dict(self.options)} if self.options else {})}

    def factory_options(self, features: FeatureOptions | None = None) -> dict[str, Any]:
        """Keyword arguments of the attributor's factory: for "clip" its model and weights and `features`, how it
        reads images (`CLIP_LOADER_FIELDS` among `options` override those of `features`), then `options`, which
        win."""
        if self.attributor != "clip":
            return dict(self.options)
        loader = {k: v for k, v in self.options.items() if k in CLIP_LOADER_FIELDS}
        clip: dict[str, Any] = {"model": self.clip_model, "pretrained": self.pretrained}
        if features is not None or loader:
            clip["features"] = dataclasses.replace(features or FeatureOptions(), **loader)
        return clip | {k: v for k, v in self.options.items() if k not in CLIP_LOADER_FIELDS}


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings (from a repeatable `flag`) as a dict; values that parse as JSON are decoded."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} wants KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: scheduler name -> (diffusers class name, config overrides applied on top of the pipeline's scheduler config)
SCHEDULERS: Registry[tuple[str, dict[str, Any]]] = Registry("scheduler")
SCHEDULERS.register("dpmsolver++")(("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}))
SCHEDULERS.register("dpmsolver++-karras")(
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}))
SCHEDULERS.register("ddim")(("DDIMScheduler", {}))
SCHEDULERS.register("pndm")(("PNDMScheduler", {"skip_prk_steps": True}))
SCHEDULERS.register("euler")(("EulerDiscreteScheduler", {}))
SCHEDULERS.register("unipc")(("UniPCMultistepScheduler", {}))

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
#: RenderOptions fields the flags of `RenderOptions.add_arguments` set, each under the argparse dest render_<field>
#: the stages of a build run as separate jobs (job arrays); "all" runs them in one (`failmode.generation.coordinate`)
BUILD_STAGES = ("all", "prepare", "render", "finalize")
#: how long a renderer waits for prepare (and a rank for rank 0) unless --wait-timeout says otherwise
DEFAULT_WAIT_TIMEOUT_S = 6 * 3600.0

RENDER_FLAG_FIELDS = ("precision", "batch_size", "compile", "channels_last", "fuse_qkv", "safety_checker", "threads")


@dataclass(frozen=True)
class RenderOptions:
    """How a diffusers pipeline renders (`failmode.generation.render.DiffusersGenerator`): speed knobs, none of
    which changes which image a seed gives (within float rounding), and the safety checker."""

    device: str | None = None  # default: CUDA when available
    precision: str = "auto"  # fp32 | fp16 | bf16 | auto (fp16 on CUDA, fp32 on CPU)
    batch_size: int = bounded(16, 1, 1024)  # fixed kernel batch (samples per denoising pass; CFG doubles it)
    scheduler: str | None = "dpmsolver++"  # None: the pipeline's own scheduler
    channels_last: bool = True
    compile: str | None = None  # None | "default" | "reduce-overhead" | "max-autotune"
    fuse_qkv: bool = False
    safety_checker: bool = False
    threads: int = 1  # CPU intra-op threads for rendering and scoring: fixed per build (CPU bytes depend on it)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.precision not in PRECISION_CHOICES:
            raise UsageError(f"precision must be {', '.join(PRECISION_CHOICES)}; got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise UsageError(f"compile must be null or one of {', '.join(m for m in COMPILE_MODES if m)}; "
                             f"got {self.compile!r}")
        try:
            check_ranges(self, "")
        except ValidationError as e:
            raise UsageError(str(e)) from None
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            SCHEDULERS.get(self.scheduler)  # one line listing the known schedulers

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any, **precision: Any) -> None:
        """--precision (`precision`: argparse settings of that flag that replace its own, a type, say), --batch-size,
        --compile, --no-channels-last, --fuse-qkv, --safety-checker, --threads; a flag not given leaves the base
        options' value."""
        p.add_argument("--precision", dest="render_precision", **{
            "choices": PRECISION_CHOICES,
            "help": "generator precision, a dtype (default: the preset's, else auto: fp16 on CUDA, fp32 on CPU)",
            **precision})
        p.add_argument("--batch-size", dest="render_batch_size", type=arg_type(RenderOptions, "batch_size"), metavar="N",
                       help="images per denoising pass, 1..1024, one fixed kernel shape (default: the preset's, else 16; "
                            "halves on out-of-memory)")
        p.add_argument("--compile", dest="render_compile", choices=[m for m in COMPILE_MODES if m],
                       help="torch.compile the UNet and the VAE decoder in this mode (default: not compiled)")
        p.add_argument("--no-channels-last", dest="render_channels_last", action="store_false", default=None,
                       help="keep the UNet and VAE in the default memory format")
        p.add_argument("--fuse-qkv", dest="render_fuse_qkv", action="store_true", default=None,
                       help="fuse the attention projections")
        p.add_argument("--safety-checker", dest="render_safety_checker", action="store_true", default=None,
                       help="run the pipeline's safety checker; a flagged image is redrawn from the next seed")
        p.add_argument("--threads", dest="render_threads", type=int, metavar="N",
                       help="CPU threads for rendering and scoring (default: the preset's, else 1); fixed per build "
                            "and recorded, since CPU pixels depend on it (the launcher's OMP_NUM_THREADS is not used)")

    @staticmethod
    def given(args: argparse.Namespace) -> dict[str, Any]:
        """The fields the flags of `add_arguments` set on this command line (what overrides a preset's section)."""
        return {f: v for f in RENDER_FLAG_FIELDS if (v := getattr(args, f"render_{f}")) is not None}

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: RenderOptions | None = None, **fields: Any) -> RenderOptions:
        """`base` (default: the defaults) with the flags given on the command line and `fields` applied."""
        return dataclasses.replace(base or cls(), **{**cls.given(args), **fields})

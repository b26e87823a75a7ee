"""Backends are built through one explicit contract: a registered class's `from_context(context, **options)` takes
what it says it takes of the run's `BackendContext`; nothing is matched by parameter name."""

from __future__ import annotations

from typing import Any

import pytest

from failmode.backends import GENERATORS, BackendContext, ImageGenerator, construct
from failmode.errors import UsageError
from failmode.registry import Registry
from failmode.testing import SEED_COLOR, SeedColorGenerator


class DeviceGenerator(ImageGenerator):
    """Takes the context's device (and nothing else of it) unless its options set one."""

    ident = "test:device"

    def __init__(self, device: str = "default", dataset: str = "own") -> None:
        self.device, self.dataset = device, dataset

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> DeviceGenerator:
        return cls(**{"device": context.device, **options})

    def generate(self, requests: Any) -> list[Any]:
        return []


def test_a_backend_takes_only_what_its_from_context_declares_and_options_win():
    registry: Registry[type[ImageGenerator]] = Registry("generator")
    registry.register("device")(DeviceGenerator)
    context = BackendContext(device="cpu", kind="color", dataset="./world", cache_dir="/cache")
    made = construct(registry, "device", None, context)
    # `dataset` is a parameter of the class but not something its from_context takes: it keeps its own default
    assert (made.device, made.dataset) == ("cpu", "own")
    assert construct(registry, "device", {"device": "cuda:1"}, context).device == "cuda:1"
    # the interface's default takes nothing of the context: the seed-colour generator gets its options only
    seed = construct(GENERATORS, SEED_COLOR, {"size": 4}, context)
    assert isinstance(seed, SeedColorGenerator) and seed.size == 4
    assert construct(GENERATORS, SEED_COLOR).size == 8


@pytest.mark.parametrize("name,options,message", [
    (SEED_COLOR, {"colour": 1}, r"generator 'seed-color': bad options \['colour'\] \(.*unexpected keyword"),
    ("nope", {}, "unknown generator 'nope'"),
])
def test_bad_backend_names_and_options_are_one_line(name, options, message):
    with pytest.raises(UsageError, match=message) as e:
        construct(GENERATORS, name, options, BackendContext(device="cpu"))
    assert "\n" not in str(e.value)


def test_a_plain_factory_registered_by_name_gets_its_options_and_bad_ones_are_one_line():
    registry: Registry[Any] = Registry("generator")
    registry.register("plain")(lambda size=8: ("plain", size))
    assert construct(registry, "plain", {"size": 16}, BackendContext(device="cpu")) == ("plain", 16)
    with pytest.raises(UsageError, match=r"^generator 'plain': bad options \['colour'\]"):
        construct(registry, "plain", {"colour": 1})


def test_slices_and_discover_resolve_a_registered_generator_as_build_and_generate_do():
    """The real-data debug config of slices / discover renders with the generator `--generator` names: a registered
    name is that backend (never looked up on the Hub as a diffusers id)."""
    from failmode.discovery.outputs import diffusers_render
    from failmode.generation.plan import GenerationSettings
    from failmode.options import RenderOptions

    settings = GenerationSettings(generator=SEED_COLOR, size=8, steps=1, guidance=0.0, scheduler="none")
    assert isinstance(diffusers_render(settings, RenderOptions(device="cpu")).make_generator(), SeedColorGenerator)

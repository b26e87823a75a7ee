"""The offline "fashion-scenes" world: real Fashion-MNIST objects composited onto real scene photos.

Every image's ground-truth context is known, so the whole method (mine -> attribute -> generate -> evaluate) can
be measured end to end on a CPU with no download. Two stand-in backends live here, registered beside the real
ones and named as stand-ins in every output: `CompositeGenerator` (for Stable Diffusion) and `ExemplarAttributor`
(for CLIP). `failmode demo` runs the method on this world.
"""

from failmode.world.fashion import FASHION_CLASSES, load_fashion_mnist
from failmode.world.scenes import Scene, load_scenes, scene_pixels
from failmode.world.world import World, WorldPreset, WorldSource, build_world, list_presets, load_preset

__all__ = [
    "FASHION_CLASSES",
    "Scene",
    "World",
    "WorldPreset",
    "WorldSource",
    "build_world",
    "list_presets",
    "load_fashion_mnist",
    "load_preset",
    "load_scenes",
    "scene_pixels",
]

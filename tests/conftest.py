"""Shared fixtures: tiny MobileVLM checkpoints (V1, V2) in the mtgv layout, built and exported once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

VERSIONS = {"v1": "ldpnet", "v2": "ldpnetv2"}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mvlm")


@pytest.fixture(scope="session")
def cache_dir(workdir) -> Path:
    return workdir / "cache"


@pytest.fixture(scope="session")
def checkpoint(workdir):
    """checkpoint("v1" | "v2") -> folder of a tiny random checkpoint, built once."""
    from mvlm_magic.model.tiny import build_tiny_checkpoint

    @cache
    def build(version: str = "v2") -> Path:
        return build_tiny_checkpoint(workdir / f"tiny-{version}", projector_type=VERSIONS[version], seed=7)

    return build


@pytest.fixture(scope="session")
def exported(checkpoint, cache_dir):
    """exported("v2", "fp32") -> export folder, exported once per session."""
    from mvlm_magic.export import export_model

    @cache
    def export(version: str = "v2", compression: str = "fp32") -> Path:
        return export_model(checkpoint(version), compression, cache_dir=cache_dir).path

    return export


@pytest.fixture(scope="session")
def engine(exported):
    """engine("v2", "fp32", "f32") -> a compiled Engine, one per combination."""
    from mvlm_magic.runtime.engine import Engine

    @cache
    def make(version: str = "v2", compression: str = "fp32", precision: str = "f32") -> Engine:
        return Engine(exported(version, compression), precision=precision)

    return make


@pytest.fixture(scope="session")
def torch_model(checkpoint):
    from mvlm_magic.model.mobilevlm import MobileVLM

    @cache
    def load(version: str = "v2"):
        return MobileVLM.from_folder(checkpoint(version))

    return load


def shapes_picture(size=(300, 200), background=(30, 60, 150), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, size[0] - 40), rng.integers(0, size[1] - 40)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x, y, x + 40, y + 40), fill=colour)
    return image


@pytest.fixture(scope="session")
def nano_engine(cache_dir):
    """The bundled model's int8 export, compiled once for every test that asks it."""
    from mvlm_magic.demo import bundled_model
    from mvlm_magic.loader import load_engine

    return load_engine(bundled_model(), "int8", cache_dir=cache_dir)


@pytest.fixture
def picture():
    return shapes_picture()


class DisplayRecorder:
    """Stands in for IPython's `display` where the test is the front end: what was shown (with its options), and
    each later update of it (its own display handle)."""

    def __init__(self):
        self.shown, self.options, self.updates = [], [], []

    def __call__(self, obj, **options):
        self.shown.append(obj)
        self.options.append(options)
        return self

    def update(self, obj, **options):
        self.updates.append(obj)


@pytest.fixture
def magic_shell(exported, cache_dir):
    """A real IPython shell with the extension loaded and the tiny V2 fp32 export loaded at f32."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "mvlm_magic")
    try:
        shell.run_line_magic("config", f"MvlmMagics.cache_dir = {str(cache_dir)!r}")
        shell.run_line_magic("mvlm_load", f"{exported('v2', 'fp32')} --precision f32")
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "mvlm_magic")

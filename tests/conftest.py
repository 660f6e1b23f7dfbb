"""Shared fixtures: the tiny random-weight Idefics3 and generated images (CPU, offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests

import pytest
import torch
from PIL import Image, ImageDraw

from qgsa_bench.build import build


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset with random weights, fp32 on CPU, QGSA module randomly initialised."""
    return build("tiny", weights="random", device="cpu", dtype="fp32", seed=0)


@pytest.fixture(scope="session")
def llava_tiny():
    """The llava-tiny preset (LLaVA-1.5's architecture, toy sizes), random weights, fp32 on CPU."""
    return build("llava-tiny", weights="random", device="cpu", dtype="fp32", seed=0)


def make_image(size=(96, 80)) -> Image.Image:
    img = Image.new("RGB", size, (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse((5, 5, 40, 40), fill=(220, 30, 30))
    draw.rectangle((50, 40, 90, 75), fill=(30, 60, 220))
    return img


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "shapes.png"
    make_image().save(path)
    return path


@pytest.fixture
def images():
    return [make_image(), make_image((64, 64)).rotate(90)]


@pytest.fixture(autouse=True)
def _own_hub_cache(tmp_path_factory, monkeypatch):
    """Data sets named without --data-dir resolve through the HF cache: never the developer's own."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "empty-hf-cache"))


@pytest.fixture(autouse=True)
def _no_grad_leak():
    torch.set_grad_enabled(True)
    yield

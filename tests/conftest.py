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


def write_refer_layout(root):
    """The refer toolkit's layout under root (refs(unc).p, instances.json, COCO train2014): one referent with two
    expressions in split testA; returns the images folder."""
    import json
    import pickle

    import numpy as np

    (root / "refcoco").mkdir(parents=True)
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((100, 200, 3)) * 255).astype(np.uint8)).save(
        images / "COCO_train2014_000000000042.jpg")
    (root / "refcoco" / "instances.json").write_text(json.dumps({
        "images": [{"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 7, "image_id": 42, "category_id": 1, "bbox": [50, 25, 50, 25]}],
        "categories": [{"id": 1, "name": "person"}]}))
    refs = [{"ref_id": 3, "ann_id": 7, "image_id": 42, "category_id": 1, "split": "testA",
             "sentences": [{"sent": "man on the left"}, {"sent": "left guy"}]}]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return images


@pytest.fixture
def refer_layout():
    """`write_refer_layout`, for the tests that read RefCOCO in the refer toolkit's layout."""
    return write_refer_layout

"""Image loading and preprocessing, and the resolution rules of the dense and sparse paths.

Preprocessing (documented choice): the image is rendered as 8-bit RGB (`data.types.to_rgb`: transparency on
white, 16-bit grey by its top byte, the rule for every PIL mode in data/types.py), resized to a square R x R with
bicubic interpolation, scaled to [0, 1] and normalised with the model's image processor mean/std
(the preset's, SmolVLM's 0.5/0.5, when the model ships no processor). We do not call SmolVLM's own
image processor because it always resizes to multiples of 512 px and splits large images into
tiles, which would make a resolution sweep impossible; its normalisation constants are kept.

Resolution rules:
* every pipeline needs R to be a multiple of the patch size p (N = (R/p)^2 patches);
* the dense path's connector (pixel shuffle by scale_factor s) needs R/p to be a multiple of s.
  When it is not, the dense path resizes the image up to the next multiple of p*s (224 -> 256 for
  SmolVLM, p=16, s=4), as SmolVLM's processor also rounds sizes up; the effective resolution is
  reported beside the requested one. Sparse pipelines use R as given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from qgsa_bench import QGSAError
from qgsa_bench.data.types import to_rgb


def load_image(path: str | Path):
    """An image file (--image) -> RGB PIL image, by the one code path every image takes
    (`data.types.open_image`: the same rendering of every PIL mode, the same size limit).

    Raises QGSAError (one line naming the file) when it is missing, above QGSA_MAX_IMAGE_PIXELS pixels,
    or cannot be decoded for any reason."""
    from qgsa_bench.data.types import open_image

    return open_image(Path(path))


def command_image(path: str | Path | None):
    """A command's --image (sweep-resolution, sweep-budget, ablate, ask) -> RGB PIL image, or `demo_image()`
    for None. Each command calls it before the model loads, so that a missing or damaged file is one error
    line at once, not after minutes of loading. Raises QGSAError as `load_image`."""
    return load_image(path) if path else demo_image()


def check_resolution(resolution: int, patch_size: int) -> int:
    """Validate R for the sparse pipelines; return the number of patches N."""
    if resolution <= 0 or resolution % patch_size:
        raise QGSAError(
            f"resolution {resolution} is not a positive multiple of the patch size {patch_size} "
            f"(try {max(patch_size, round(resolution / patch_size) * patch_size)})"
        )
    return (resolution // patch_size) ** 2


def dense_resolution(resolution: int, patch_size: int, scale_factor: int) -> int:
    """The resolution the dense path runs at: R rounded up to a multiple of patch_size * scale_factor."""
    check_resolution(resolution, patch_size)
    unit = patch_size * scale_factor
    return int(math.ceil(resolution / unit) * unit)


def preprocess(images, resolution: int, mean, std) -> torch.Tensor:
    """PIL images -> normalised pixel values (B, 3, R, R), float32."""
    from PIL import Image

    arrays = []
    for img in images:
        img = to_rgb(img).resize((resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, R, R)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def demo_image(size: int = 512):
    """A deterministic test picture (three coloured shapes on grey), for runs given no image."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    s = size / 512
    draw.ellipse((60 * s, 60 * s, 200 * s, 200 * s), fill=(220, 30, 30))
    draw.rectangle((300 * s, 280 * s, 460 * s, 440 * s), fill=(30, 60, 220))
    draw.polygon([(330 * s, 60 * s), (460 * s, 220 * s), (200 * s, 220 * s)], fill=(40, 170, 60))
    return img

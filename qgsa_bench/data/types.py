"""The one sample type every loader yields, and how its image is opened.

Images reach the model the way the model's own image processor converts them: SmolVLM's
(Idefics3ImageProcessor, `do_convert_rgb=True`, transformers' `image_transforms.convert_to_rgb`) and
LLaVA's (CLIPImageProcessor) composite any transparency (an alpha band, or a palette / grey image
with a transparent colour) onto white, and convert every other mode with PIL's `convert("RGB")`.
A plain `convert("RGB")` would drop the alpha band and show the hidden colour, usually black.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from qgsa_bench import QGSAError


@dataclass
class VQASample:
    id: str
    question: str
    answers: list[str]  # references (VQA-RAD: one; A-OKVQA: 10 direct answers; RefCOCO: expressions); [] = private
    image: object  # a path, encoded bytes, a PIL image (generated data) or a ParquetCell (read when opened)
    question_type: str = ""
    answer_type: str = ""  # VQA-RAD: OPEN / CLOSED
    box: tuple[float, float, float, float] | None = None  # referent [x, y, w, h] in original pixels
    choices: list[str] | None = None  # A-OKVQA multiple choice
    correct_choice: int | None = None
    split: str = ""
    dataset: str = ""
    extra: dict = field(default_factory=dict)

    def open_image(self):
        return open_image(self.image, self.id)


def to_rgb(img):
    """PIL image of any mode -> RGB, transparency composited onto white (the model processors' rule)."""
    from PIL import Image

    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(ref, name: str | None = None):
    """Decode an image reference (path, bytes, PIL image, parquet cell) to RGB PIL; one clear error when
    it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from qgsa_bench.data.files import ParquetCell

    where = f" (sample {name})" if name else ""
    try:
        if isinstance(ref, Image.Image):
            return to_rgb(ref)
        if isinstance(ref, ParquetCell):
            cell = ref.value()
            if cell is None:
                raise QGSAError(f"no image in parquet {ref}{where}: the cell holds neither bytes nor a path")
            try:
                return open_image(cell, name)
            except QGSAError as err:
                raise QGSAError(f"parquet {ref}: {err}") from None
        if isinstance(ref, (bytes, bytearray)):
            with Image.open(io.BytesIO(ref)) as img:
                img.load()
                return to_rgb(img)
        path = Path(ref)
        if not path.is_file():
            raise QGSAError(f"image not found: {path}{where}")
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as err:
        raise QGSAError(f"cannot read image {describe(ref)}{where} ({err.__class__.__name__}): "
                        f"expected a PNG/JPEG/... file") from err


def describe(ref) -> str:
    """An image reference in a message: a path or parquet cell as such, bytes by their length only."""
    if isinstance(ref, (bytes, bytearray)):
        return f"of {len(ref)} bytes"
    return str(ref)

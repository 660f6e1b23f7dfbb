"""The one sample type every loader yields, and how its image is opened."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from qgsa_bench import QGSAError


@dataclass
class VQASample:
    id: str
    question: str
    answers: list[str]  # reference answers (VQA-RAD: one; A-OKVQA: 10 direct answers; RefCOCO: expressions)
    image: object  # a path, encoded bytes, or a PIL image (generated data)
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


def open_image(ref, name: str = "image"):
    """Decode an image reference to RGB PIL; one clear error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    try:
        if isinstance(ref, (bytes, bytearray)):
            with Image.open(io.BytesIO(ref)) as img:
                return img.convert("RGB")
        path = Path(ref)
        if not path.is_file():
            raise QGSAError(f"image not found: {path} (sample {name})")
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise QGSAError(f"cannot read the image of sample {name} ({err.__class__.__name__})") from err

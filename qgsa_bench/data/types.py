"""The one sample type every loader yields, and the one way an image is opened and rendered.

Every image the model sees goes through `open_image` (files, encoded bytes, parquet cells, PIL images;
`qgsa ask --image` too, via `models.images.load_image`) and `to_rgb` (images handed to the model directly),
so a mode is rendered the same way whichever command reads it. The rendering, mode by mode:

* transparency (an alpha band: RGBA, LA, PA; premultiplied RGBa, La; or a palette / grey / RGB image with
  a transparent colour) is composited onto white, as the models' own processors do: SmolVLM's
  (Idefics3ImageProcessor, `do_convert_rgb=True`, transformers' `image_transforms.convert_to_rgb`) and
  LLaVA's (CLIPImageProcessor). A plain `convert("RGB")` would show the hidden colour, usually black;
* 16-bit grey (I;16, I;16B, I;16L, I;16N: PNG and TIFF radiology exports) is shown by its top byte,
  value >> 8, the nominal 0..65535 range mapped onto 0..255 (`convert("RGB")` clips every value above 255
  to white); 12-bit data stored in 16 bits therefore looks dark, as in any viewer showing the full range;
* 32-bit integer I whose values all lie in 0..65535 is 16-bit data (Pillow before 10.3 opens 16-bit PNGs
  as I; `convert("I")` of an I;16 image) and is shown as 16-bit, value >> 8, so a file renders the same
  whatever the Pillow version; any other I image (negative values or above 65535) and every float F
  image have no nominal range (counts, Hounsfield units, depth, probabilities in 0..1), so they are
  stretched linearly from the image's own minimum (0) to its maximum (255), like a viewer's automatic
  window; a constant image keeps its value, clipped to 0..255; NaN is shown as 0;
* every other mode (1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV) is converted by PIL's `convert("RGB")`,
  a colour conversion for CMYK, YCbCr, LAB and HSV (LAB's A band is a colour axis, not alpha).

Size limit: an image of more than `max_image_pixels()` pixels (default 178,956,970, Pillow's own
decompression-bomb refusal) is refused before it is decoded; the environment variable
QGSA_MAX_IMAGE_PIXELS raises or lowers it (a whole number of pixels, or `none` for no limit), for every
command. Any failure to decode an image (unknown format, damaged data, truncated file, too large) is one
QGSAError naming the image, which the CLI prints as one `error:` line and --skip-bad counts as a skip.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
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


PIXEL_LIMIT_ENV = "QGSA_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow refuses images above 2 x its MAX_IMAGE_PIXELS (89,478,485)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_PREMULTIPLIED = {"La": "L", "RGBa": "RGB"}  # modes whose colour is premultiplied by alpha


def max_image_pixels() -> int | None:
    """The largest image, in pixels (width x height), that `open_image` decodes: QGSA_MAX_IMAGE_PIXELS
    from the environment (read at each call), default 178,956,970; None when set to `none` or 0 (no limit).
    Raises QGSAError for any other value that is not a positive whole number."""
    import os

    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if text.lower() in ("none", "0"):
        return None
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise QGSAError(f"{PIXEL_LIMIT_ENV}={text!r} is not a number of pixels: set it to a whole number "
                        f"(e.g. {2 * DEFAULT_MAX_IMAGE_PIXELS}) or to 'none' for no limit")
    return value


def to_rgb(img):
    """PIL image of any mode -> its faithful 8-bit RGB rendering (`img` itself when it is plain RGB; `img`
    is never changed).

    Transparency is composited onto white, 16-bit grey shown by its top byte, 32-bit integer and float
    grey stretched from the image's own min/max (module docstring: the rule for each mode)."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return _grey_to_rgb(img)
    if img.mode in _PREMULTIPLIED:  # PIL converts RGBa, not La, to RGBA: through RGBa, the same rounding
        *colour, alpha = img.split()
        img = Image.merge("RGBa", (colour * 3 if len(colour) == 1 else colour) + [alpha]).convert("RGBA")
    alpha_band = img.mode != "LAB" and "A" in img.getbands()
    if alpha_band or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def grey_to_8bit(values, mode: str):
    """One grey band of a 16-bit, 32-bit integer or float image, (H, W) numbers -> (H, W) uint8.

    16-bit modes: value >> 8. I: value >> 8 when every value lies in 0..65535, else stretched from the
    image's min (0) to max (255). F: stretched from min to max. Stretching rounds to the nearest level;
    a constant image keeps its value clipped to 0..255; NaN -> 0, +inf -> 255, -inf -> 0."""
    import numpy as np

    values = np.asarray(values)
    if mode in SIXTEEN_BIT_MODES:
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
        return (values.astype(np.int64) >> 8).astype(np.uint8)
    x = values.astype(np.float64)
    finite = x[np.isfinite(x)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    if hi > lo:
        scaled = (np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo))  # +-inf clipped to the max / the min
    else:
        scaled = np.clip(x, 0, 255)
    scaled = np.where(np.isnan(x), 0, scaled)
    return np.rint(scaled).astype(np.uint8)


def _grey_to_rgb(img):
    """A 16-bit, I or F image -> RGB (grey_to_8bit), its transparent value (PNG tRNS) composited on white."""
    import numpy as np
    from PIL import Image

    values = np.asarray(img)
    grey = grey_to_8bit(values, img.mode)
    transparent = img.info.get("transparency")
    if isinstance(transparent, (int, float)) and not isinstance(transparent, bool):
        grey = np.where(values == transparent, 255, grey).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")


def open_image(ref, name: str | None = None):
    """Decode an image reference (a path, encoded bytes, a PIL image, a parquet cell) -> RGB PIL image,
    rendered by `to_rgb`. `name` (a sample id) is named in errors.

    Raises QGSAError (one line naming the image and what to do) when the file is missing, has more pixels
    than `max_image_pixels()`, or cannot be decoded for any reason: PIL.UnidentifiedImageError, OSError
    (truncated or damaged data), SyntaxError and ValueError (broken PNG chunks), DecompressionBombError,
    and every other exception a decoder raises."""
    from PIL import Image

    from qgsa_bench.data.files import ParquetCell

    where = f" (sample {name})" if name else ""
    if isinstance(ref, ParquetCell):
        try:
            cell = ref.value()
        except (OSError, ValueError, TypeError) as err:
            raise QGSAError(f"cannot read parquet {ref}{where} ({err.__class__.__name__}): a damaged or partial "
                            f"download? delete it and download again") from err
        if cell is None:
            raise QGSAError(f"no image in parquet {ref}{where}: the cell holds neither bytes nor a path")
        try:
            return open_image(cell, name)
        except QGSAError as err:
            raise QGSAError(f"parquet {ref}: {err}") from None
    if isinstance(ref, (bytes, bytearray)):
        source = io.BytesIO(ref)
    elif isinstance(ref, Image.Image):
        source = ref
    else:
        source = Path(ref)
        if not source.is_file():
            raise QGSAError(f"image not found: {source}{where}")
    limit = max_image_pixels()
    try:
        with _pixel_limit(limit):
            if isinstance(source, Image.Image):  # decoded already, or decoded now if opened lazily
                return to_rgb(source)
            with Image.open(source) as img:
                img.load()
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise QGSAError(_too_large(ref, where, limit, err)) from err
    except Exception as err:  # decoders raise many kinds: OSError, SyntaxError, ValueError, struct.error, ...
        raise QGSAError(f"cannot read image {describe(ref)}{where} ({_reason(err)}): "
                        f"expected a PNG/JPEG/... file") from err


@contextmanager
def _pixel_limit(limit: int | None):
    """Pillow refuses, inside the block, any image of more than `limit` pixels (None: no limit): its
    MAX_IMAGE_PIXELS is `limit` and its DecompressionBombWarning an error (else it would only warn between
    1 and 2 x MAX_IMAGE_PIXELS). Pillow's setting is restored afterwards."""
    import warnings

    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _reason(err: Exception) -> str:
    """The exception's class, and its message on one short line (never the file's bytes in full);
    UnidentifiedImageError's message only repeats the file, so its class alone."""
    from PIL import UnidentifiedImageError

    text = " ".join(str(err).split())
    if isinstance(err, UnidentifiedImageError) or not text:
        return err.__class__.__name__
    return f"{err.__class__.__name__}: {text if len(text) <= 120 else text[:117] + '...'}"


def _too_large(ref, where: str, limit: int | None, err: Exception) -> str:
    import re

    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (f"image {describe(ref)}{where} has {size}, above the limit of {limit or 0:,} (Pillow's decompression-bomb "
            f"guard): if you trust the file, raise the limit with the environment variable {PIXEL_LIMIT_ENV} "
            f"(a number of pixels, or 'none')")


def describe(ref) -> str:
    """An image reference in a message: a path or parquet cell as such, bytes by their length only."""
    if isinstance(ref, (bytes, bytearray)):
        return f"of {len(ref)} bytes"
    return str(ref)

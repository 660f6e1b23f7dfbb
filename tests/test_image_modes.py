"""Field cases 09 (a 16-bit grey image reached the model white) and 29 (an image Pillow refuses as a
decompression bomb ended in a traceback, and --skip-bad did not skip it), each as a test of the whole kind:
every PIL mode reaches the model as its documented 8-bit rendering, through both entry points
(`open_image` for data sets, `load_image` for --image); every decoder failure is one `error:` line or,
under --skip-bad, a counted skip; the size limit is QGSA_MAX_IMAGE_PIXELS."""

import io
import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.data import load_dataset
from qgsa_bench.data.types import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PIXEL_LIMIT_ENV,
    max_image_pixels,
    open_image,
    to_rgb,
)
from qgsa_bench.models.images import load_image

TINY = ["--model", "tiny", "--weights", "random", "--device", "cpu"]
U16 = np.array([[0, 255, 256, 4660, 32768, 65280, 65535]], dtype=np.uint16)
U16_TOP = [0, 0, 1, 18, 128, 255, 255]  # value >> 8


def rgb(img) -> np.ndarray:
    out = np.asarray(open_image(img))
    assert out.dtype == np.uint8 and out.shape == (img.height, img.width, 3)
    return out


def grey(img) -> list[int]:
    """The first row of the rendering, asserting R == G == B."""
    out = rgb(img)
    assert (out == out[..., :1]).all()
    return out[0, :, 0].tolist()


# ---- 09: high-bit grey -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")])
def test_16bit_grey_is_its_top_byte(mode, dtype):
    img = Image.frombytes(mode, (U16.shape[1], 1), U16.astype(dtype).tobytes())
    assert img.mode == mode and np.asarray(img).tolist() == U16.tolist()
    assert grey(img) == U16_TOP


def test_16bit_png_ramp_through_both_entry_points(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    expected = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    assert np.array_equal(np.asarray(open_image(path)), expected)
    assert np.array_equal(np.asarray(load_image(path)), expected)  # `qgsa ask --image`
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), expected)  # parquet bytes
    assert np.array_equal(np.asarray(to_rgb(Image.open(path))), expected)  # images handed to the model


def test_16bit_png_transparent_grey_value_is_white(tmp_path):
    path = tmp_path / "trns16.png"
    Image.fromarray(U16).save(path, transparency=4660)
    assert Image.open(path).info["transparency"] == 4660
    assert grey(Image.open(path)) == [0, 0, 1, 255, 128, 255, 255]


def test_32bit_integer_in_16bit_range_is_shown_as_16bit():
    img = Image.fromarray(U16.astype(np.int32))
    assert img.mode == "I" and grey(img) == U16_TOP  # the same as I;16: Pillow < 10.3 opens 16-bit PNGs as I


def test_32bit_integer_beyond_16bit_is_stretched_from_its_min_to_max():
    img = Image.fromarray(np.array([[-1000, 0, 2000, 3000, 3000]], dtype=np.int32))  # e.g. Hounsfield units
    assert img.mode == "I" and grey(img) == [0, 64, 191, 255, 255]  # 255 * (v + 1000) / 4000, rounded
    assert grey(Image.fromarray(np.array([[0, 70000, 140000]], dtype=np.int32))) == [0, 128, 255]


def test_float_is_stretched_from_its_min_to_max():
    f = np.array([[0.0, 0.25, 1.0, np.nan, np.inf, -np.inf]], dtype=np.float32)
    assert grey(Image.fromarray(f, "F")) == [0, 64, 255, 0, 255, 0]  # NaN -> 0, inf clipped to max / min
    hu = np.array([[-1024.0, 0.0, 3071.0]], dtype=np.float32)
    assert grey(Image.fromarray(hu, "F")) == [0, 64, 255]
    assert grey(Image.fromarray(np.full((1, 3), 100.0, np.float32), "F")) == [100] * 3  # constant: its value
    assert grey(Image.fromarray(np.full((1, 2), 1e6, np.float32), "F")) == [255] * 2  # ... clipped to 0..255


# ---- 8-bit modes: colour conversions, and transparency composited on white (as case 08) --------------
def one_row(mode, pixels):
    img = Image.new(mode, (len(pixels), 1))
    for x, value in enumerate(pixels):
        img.putpixel((x, 0), value)
    return img


@pytest.mark.parametrize("mode, pixels, expected", [
    ("1", [0, 1, 255], [(0, 0, 0), (255, 255, 255), (255, 255, 255)]),
    ("L", [0, 7, 200], [(0, 0, 0), (7, 7, 7), (200, 200, 200)]),
    ("RGB", [(1, 2, 3), (220, 30, 30)], [(1, 2, 3), (220, 30, 30)]),
    ("RGBX", [(1, 2, 3, 0), (220, 30, 30, 99)], [(1, 2, 3), (220, 30, 30)]),
    ("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 128, 0, 0), (0, 0, 0, 128), (0, 0, 0, 255)],
     [(255, 255, 255), (0, 255, 255), (255, 127, 255), (127, 127, 127), (0, 0, 0)]),
    ("YCbCr", [(0, 128, 128), (128, 128, 128), (255, 128, 128), (76, 84, 255)],
     [(0, 0, 0), (128, 128, 128), (255, 255, 255), (254, 0, 0)]),
    ("HSV", [(0, 255, 255), (85, 255, 255), (0, 0, 128)], [(255, 0, 0), (0, 255, 0), (128, 128, 128)]),
    # alpha: colour * a + white * (1 - a), rounded (PIL's alpha_composite, the processors' rule)
    ("RGBA", [(220, 30, 30, 255), (0, 0, 0, 0), (30, 60, 220, 128)], [(220, 30, 30), (255, 255, 255), (142, 157, 237)]),
    ("LA", [(100, 255), (0, 0), (100, 128)], [(100, 100, 100), (255, 255, 255), (177, 177, 177)]),
    # premultiplied alpha: the stored colour is colour * a, so on white it is stored + (255 - a)
    ("La", [(100, 255), (0, 0), (50, 128)], [(100, 100, 100), (255, 255, 255), (177, 177, 177)]),
    ("RGBa", [(220, 30, 30, 255), (0, 0, 0, 0), (15, 30, 110, 128)], [(220, 30, 30), (255, 255, 255), (142, 157, 237)]),
])
def test_8bit_modes_render_as_documented(mode, pixels, expected):
    img = one_row(mode, pixels)
    assert img.mode == mode
    assert [tuple(p) for p in rgb(img)[0].tolist()] == expected


def test_palette_modes_with_transparency():
    p = one_row("P", [0, 1, 2])
    p.putpalette([0, 0, 0, 220, 30, 30, 30, 60, 220] + [0] * 759)
    assert [tuple(v) for v in rgb(p)[0].tolist()] == [(0, 0, 0), (220, 30, 30), (30, 60, 220)]
    p.info["transparency"] = 0
    assert [tuple(v) for v in rgb(p)[0].tolist()] == [(255, 255, 255), (220, 30, 30), (30, 60, 220)]
    pa_img = Image.merge("PA", (p.copy(), Image.frombytes("L", (3, 1), bytes([255, 0, 128]))))
    pa_img.putpalette(p.getpalette())
    assert [tuple(v) for v in rgb(pa_img)[0].tolist()] == [(0, 0, 0), (255, 255, 255), (142, 157, 237)]


def test_grey_and_rgb_with_a_transparent_colour():
    grey_t = one_row("L", [0, 90])
    grey_t.info["transparency"] = 0
    assert grey(grey_t) == [255, 90]
    rgb_t = one_row("RGB", [(0, 0, 0), (1, 0, 0)])
    rgb_t.info["transparency"] = (0, 0, 0)
    assert [tuple(v) for v in rgb(rgb_t)[0].tolist()] == [(255, 255, 255), (1, 0, 0)]


def test_lab_is_a_colour_conversion_not_alpha():
    lab = one_row("LAB", [(255, 128, 128), (0, 128, 128), (128, 0, 128), (128, 200, 0)])
    to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    assert np.array_equal(rgb(lab), np.asarray(ImageCms.applyTransform(lab, to_srgb)))  # its A band: a colour axis
    assert rgb(lab)[0, 1].tolist() == [1, 0, 1] and rgb(lab)[0, 0].min() >= 254  # black, white


def test_every_mode_through_a_file_renders_as_in_memory(tmp_path):
    """PNG/TIFF keep these modes as written; the file path renders them like the image itself."""
    cases = {"png": [one_row("LA", [(100, 128)]), Image.fromarray(U16), one_row("P", [1, 0]), one_row("1", [0, 1])],
             "tiff": [Image.fromarray(np.array([[-1000, 3000]], dtype=np.int32)), Image.fromarray(
                 np.array([[0.0, 0.25, 1.0]], dtype=np.float32), "F"), one_row("CMYK", [(0, 128, 0, 0)]),
                 Image.frombytes("I;16B", (7, 1), U16.astype(">u2").tobytes())]}
    for ext, images in cases.items():
        for i, img in enumerate(images):
            path = tmp_path / f"{i}.{ext}"
            img.save(path)
            assert np.array_equal(rgb(img), np.asarray(load_image(path))), (ext, img.mode)
            assert np.array_equal(rgb(img), np.asarray(open_image(path.read_bytes()))), (ext, img.mode)


# ---- 29: every decoder failure is one clear error, or a counted skip ----------------------------------
def bomb_png(width: int = 14000, height: int = 14000) -> bytes:
    """A PNG whose header declares width x height one-bit pixels (tiny on disk): Pillow refuses it when opened."""
    buf = io.BytesIO()
    Image.new("1", (1, 1), 1).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's CRC
    return bytes(data)


def png(size=(20, 20), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def broken_images() -> dict[str, bytes]:
    good = png()
    bad_crc = bytearray(good)
    bad_crc[29] ^= 0xFF  # IHDR's CRC: Pillow raises SyntaxError
    return {"unidentified": b"not an image at all", "truncated": good[:len(good) // 2],
            "broken chunk": bytes(bad_crc), "bomb": bomb_png(), "empty": b""}


@pytest.mark.parametrize("kind", list(broken_images()))
def test_every_decoder_failure_is_one_qgsa_error(kind, tmp_path):
    data = broken_images()[kind]
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for ref in (data, path):
        with pytest.raises(QGSAError) as err:
            open_image(ref, "s1")
        assert "\n" not in str(err.value) and "(sample s1)" in str(err.value)
    with pytest.raises(QGSAError, match="x.png"):
        load_image(path)


def test_the_size_limit_is_qgsa_max_image_pixels(monkeypatch):
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 178_956_970
    with pytest.raises(QGSAError, match=f"196,000,000 pixels, above the limit of 178,956,970.*{PIXEL_LIMIT_ENV}"):
        open_image(bomb_png())
    image = png((20, 20))  # 400 pixels
    for limit, readable in (("400", True), ("399", False), ("250", False), ("150", False), ("none", True), ("0", True)):
        monkeypatch.setenv(PIXEL_LIMIT_ENV, limit)  # 250: between 1 and 2 x the limit, where Pillow only warns
        if readable:
            assert open_image(image).size == (20, 20)
        else:
            with pytest.raises(QGSAError, match=f"has 400 pixels, above the limit of {limit}"):
                open_image(image)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "200_000_000")
    assert max_image_pixels() == 200_000_000
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "89_999")
    with pytest.raises(QGSAError, match="has 90,000 pixels, above the limit of 89,999"):
        open_image(bomb_png(300, 300))
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "90000")  # raised: decoded, and this one's pixel data is missing
    with pytest.raises(QGSAError, match="cannot read image of 67 bytes \\(OSError: image file is truncated"):
        open_image(bomb_png(300, 300))
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "lots")
    with pytest.raises(QGSAError, match="QGSA_MAX_IMAGE_PIXELS='lots' is not a number of pixels"):
        open_image(image)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS // 2  # Pillow's own setting is left as it was


def one_error_line(result, *fragments):
    """Exit status 2, and stderr ends in the one `error:` line (after a progress bar, if any), no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, result.stderr
    assert all(f in lines[-1] for f in fragments), lines[-1]
    assert "Traceback" not in result.output


def test_ask_on_a_bomb_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    ask = ["ask", *TINY, "--image", path, "--question", "what is this?", "--max-new-tokens", 1]
    result = CliRunner().invoke(app, [str(a) for a in ask])
    one_error_line(result, "bomb.png", "196,000,000 pixels", PIXEL_LIMIT_ENV)
    (tmp_path / "half.png").write_bytes(png()[:60])
    ask[ask.index(path)] = tmp_path / "half.png"
    one_error_line(CliRunner().invoke(app, [str(a) for a in ask]), "half.png", "cannot read image")


def write_refcoco(folder, bad: dict[int, bytes]) -> None:
    """4 rows of the lmms-lab RefCOCO parquet layout; row i's image is bad[i] when given."""
    rows = [{"question_id": f"q{i}", "image": {"bytes": bad.get(i, png((32, 32), (40 * i, 90, 90))), "path": None},
             "question": "what shape is the red object?", "answer": ["circle"], "bbox": [4.0, 4.0, 16.0, 16.0]}
            for i in range(4)]
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "test-00000-of-00001.parquet")


def test_eval_skip_bad_counts_a_bomb_and_every_broken_image(tmp_path, monkeypatch):
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    broken = broken_images()
    write_refcoco(tmp_path / "data", {1: broken["bomb"], 3: broken["broken chunk"]})
    run = ["eval", *TINY, "--dataset", "refcoco", "--data-dir", tmp_path / "data", "--split", "test",
           "--pipelines", "dense", "--max-new-tokens", 1]
    result = CliRunner().invoke(app, [str(a) for a in [*run, "--out", tmp_path / "stop"]])
    one_error_line(result, "sample q1", "196,000,000 pixels", "--skip-bad")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(a) for a in [*run, "--skip-bad", "--out", out]])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped_bad"] == 2 and meta["skipped_bad_ids"] == ["q1", "q3"]
    assert [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()] == ["q0", "q2"]


def test_every_skip_bad_loader_path_skips_every_decoder_failure(tmp_path, monkeypatch):
    """eval, grounding and train all open a data set's images through LoadedData.open_images."""
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    broken = list(broken_images().values())
    write_refcoco(tmp_path / "data", dict(enumerate(broken[:3])))
    data = load_dataset("refcoco", tmp_path / "data", "test", skip_bad=True)
    kept, images = data.open_images(data.samples)
    assert [s.id for s in kept] == ["q3"] and data.skipped_ids == ["q0", "q1", "q2"] and len(images) == 1
    data = load_dataset("refcoco", tmp_path / "data", "test")
    with pytest.raises(QGSAError, match="sample q0 has an unreadable or missing image.*pass --skip-bad"):
        data.open_images(data.samples)

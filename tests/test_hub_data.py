"""Data sets from the Hugging Face hub through the real huggingface_hub code path, offline, on caches laid
out here in the hub's own layout (datasets--owner--name/{refs/main, blobs/, snapshots/<rev>/})."""

import hashlib
import io
import json
import os
import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.data import load_dataset
from qgsa_bench.data.files import ParquetCell

REV = "0123456789abcdef0123456789abcdef01234567"


def png(color=(200, 10, 10), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def parquet_bytes(rows, row_group_size=None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=row_group_size)
    return sink.getvalue()


def lay_out_cache(cache, repo: str, files: dict[str, bytes], revision: str = REV, missing_blobs=()):
    """What snapshot_download leaves behind: blobs by content hash, snapshot files linking to them."""
    storage = cache / f"datasets--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(revision)
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if name not in missing_blobs:
            blob.write_bytes(data)
        link = storage / "snapshots" / revision / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return storage


def vqa_rad_rows(n: int, prefix: str):
    return [{"image": {"bytes": png((10 * i % 255, 50, 90)), "path": None}, "question": f"{prefix} question {i}?",
             "answer": "yes" if i % 2 else "liver"} for i in range(n)]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def vqa_rad_cache(hub_cache):
    lay_out_cache(hub_cache, "flaviagiammarino/vqa-rad", {
        "README.md": b"---\nlicense: cc0-1.0\n---\n",
        "data/train-00000-of-00001-eb8844602202be60.parquet": parquet_bytes(vqa_rad_rows(6, "train")),
        "data/test-00000-of-00001-e5bc3d208bb4deeb.parquet": parquet_bytes(vqa_rad_rows(3, "test")),
    })
    return hub_cache


def test_a_cached_hub_snapshot_is_read_offline_with_its_revision(vqa_rad_cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("an offline run must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    data = load_dataset("vqa-rad", split="train")
    assert [s.question for s in data.samples] == [f"train question {i}?" for i in range(6)]
    assert all(isinstance(s.image, ParquetCell) for s in data.samples)  # nothing decoded, no bytes held
    assert data.samples[1].open_image().getpixel((0, 0)) == (10, 50, 90)
    assert data.source == f"hf://datasets/flaviagiammarino/vqa-rad@{REV}"
    meta = data.meta()
    assert (meta["data_repo"], meta["data_revision"], meta["data_from_cache_only"]) == \
           ("flaviagiammarino/vqa-rad", REV, True)
    assert len(load_dataset("vqa-rad").samples) == 3  # default split: test
    # the same snapshot named explicitly, pinned to its revision
    assert len(load_dataset("vqa-rad", f"hf://datasets/flaviagiammarino/vqa-rad@{REV}", "train").samples) == 6


def test_hf_home_is_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay_out_cache(tmp_path / "home" / "hub", "flaviagiammarino/vqa-rad",
                  {"data/test-00000-of-00001.parquet": parquet_bytes(vqa_rad_rows(2, "test"))})
    assert len(load_dataset("vqa-rad").samples) == 2


def test_nothing_cached_offline_is_one_error_at_once(hub_cache):
    started = time.perf_counter()
    with pytest.raises(QGSAError) as err:
        load_dataset("refcoco", split="testA")
    message = str(err.value)
    assert "hub data set 'lmms-lab/RefCOCO' is not in the Hugging Face cache" in message
    assert str(hub_cache / "datasets--lmms-lab--RefCOCO") in message and "HF_HUB_OFFLINE is set" in message
    assert "--data-dir DIR" in message and "--dataset shapes" in message
    assert time.perf_counter() - started < 5
    with pytest.raises(QGSAError, match="hub data set 'nobody/no-such-set' is not in the Hugging Face cache"):
        load_dataset("refcoco", "hf://datasets/nobody/no-such-set")
    with pytest.raises(QGSAError, match="is not a hub data set: write hf://datasets/OWNER/NAME"):
        load_dataset("refcoco", "hf://just-a-name")


def test_a_repo_the_hub_does_not_have_is_one_error(hub_cache, monkeypatch):
    """Online, the hub answers 404: the real error class of huggingface_hub, turned into one line."""
    import importlib

    import huggingface_hub
    from huggingface_hub import errors
    from huggingface_hub.errors import RepositoryNotFoundError

    http = importlib.import_module(errors.Response.__module__)  # httpx2 or httpx, as this release uses

    def not_found(*args, **kwargs):
        response = http.Response(404, request=http.Request("GET", "https://huggingface.co/api/datasets/x/y"))
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr("qgsa_bench.hub.hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(QGSAError, match="hub data set 'x/y' does not exist .*check the name; pass --data-dir DIR"):
        load_dataset("aokvqa", "hf://datasets/x/y")


def test_partial_snapshots_are_refused(hub_cache):
    shard = parquet_bytes(vqa_rad_rows(2, "train"))
    lay_out_cache(hub_cache, "flaviagiammarino/vqa-rad", {
        "data/train-00000-of-00002-a.parquet": shard, "data/test-00000-of-00001-b.parquet": shard})
    with pytest.raises(QGSAError, match="is incomplete: shard\\(s\\) train-00001-of-00002 missing \\(1 of 2 there\\)"):
        load_dataset("vqa-rad", split="train")
    lay_out_cache(hub_cache, "HuggingFaceM4/A-OKVQA", {"data/validation-00000-of-00001.parquet": shard},
                  missing_blobs=("data/validation-00000-of-00001.parquet",))
    with pytest.raises(QGSAError, match="cached snapshot of 'HuggingFaceM4/A-OKVQA' is incomplete .*missing blobs"):
        load_dataset("aokvqa", split="val")


def test_splits_and_columns_are_checked(vqa_rad_cache, hub_cache):
    with pytest.raises(QGSAError, match="vqa-rad has no split 'val': use one of train, test"):
        load_dataset("vqa-rad", split="val")
    with pytest.raises(QGSAError, match="refcoco has no split 'testC': use one of train, val, test, testA, testB"):
        load_dataset("refcoco", split="testC")
    lay_out_cache(hub_cache, "HuggingFaceM4/A-OKVQA", {"data/validation-00000-of-00001.parquet": parquet_bytes(
        [{"image": {"bytes": png(), "path": None}, "question_id": "q", "question": "what?", "choices": ["a", "b"]}])})
    with pytest.raises(QGSAError, match="lacks column\\(s\\) correct_choice_idx, direct_answers"):
        load_dataset("aokvqa", split="val")


def test_large_parquet_is_read_lazily_row_group_by_row_group(tmp_path):
    rows = [{"image": {"bytes": png((i, 0, 0), (8, 8)), "path": None}, "question": f"q{i}", "answer": "no"}
            for i in range(250)]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet", row_group_size=100)
    data = load_dataset("vqa-rad", tmp_path, split="train")
    cells = [s.image for s in data.samples]
    assert [(c.row_group, c.row) for c in cells[98:102]] == [(0, 98), (0, 99), (1, 0), (1, 1)]
    assert [c.row_group for c in cells[-1:]] == [2]
    _, images = data.open_images(data.samples[199:201])
    assert [img.getpixel((0, 0)) for img in images] == [(199, 0, 0), (200, 0, 0)]


def test_train_runs_from_the_hub_cache_as_typed(vqa_rad_cache, tmp_path):
    """`qgsa train --model smolvlm-500m --dataset vqa-rad` resolves VQA-RAD's train split from the hub cache; the
    same command on the tiny model here (the 500M model is run in the closing note; README)."""
    out = tmp_path / "train"
    result = CliRunner().invoke(app, ["train", "--model", "tiny", "--weights", "random", "--dataset", "vqa-rad",
                                      "--max-steps", "2",
                                      "--align-encoder", "lm", "--batch", "4", "--resolution", "64",
                                      "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["dataset"], meta["split"], meta["n_samples"]) == ("vqa-rad", "train", 6)
    assert (meta["data_repo"], meta["data_revision"]) == ("flaviagiammarino/vqa-rad", REV)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_the_card_command_trains_smolvlm_500m_from_the_hub_cache(vqa_rad_cache, tmp_path, monkeypatch):
    """`qgsa train --model smolvlm-500m --dataset vqa-rad --max-steps 2` as typed (random weights offline:
    about 50 s and 4.4 GB on the 2-core machine), VQA-RAD's train split from the cache (the default data set is
    the generated shapes set, which needs no cache)."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--model", "smolvlm-500m", "--dataset", "vqa-rad", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "using RANDOM weights" in result.stderr
    meta = json.loads((tmp_path / "runs" / "train" / "meta.json").read_text())
    assert (meta["model"], meta["weights"], meta["dataset"], meta["split"]) == ("smolvlm-500m", "random", "vqa-rad", "train")
    assert meta["data_source"] == f"hf://datasets/flaviagiammarino/vqa-rad@{REV}"
    assert json.loads((tmp_path / "runs" / "train" / "summary.json").read_text())["steps"] == 2


def test_help_names_each_data_set_repository():
    from qgsa_bench.data.registry import HUB_REPOS

    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "400"})
    assert all(f"{name}: {repo}" in result.output for name, repo in HUB_REPOS.items())


def test_messages_are_printed_as_written_not_as_markup(tmp_path, monkeypatch):
    """Paths and data in an error line may hold [brackets]: one line, exit 2, the text intact."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for data_dir, text in ((tmp_path / "[/old]" / "vqa", f"data folder not found: {tmp_path}/[/old]/vqa"),
                           ("hf://datasets/onlyname", "write hf://datasets/OWNER/NAME[@REVISION]"),
                           ("hf://datasets/a/b@v9", "hub data set 'a/b' at revision 'v9' is not in the Hugging Face cache")):
        result = CliRunner().invoke(app, ["eval", "--model", "tiny", "--weights", "random", "--device", "cpu",
                                          "--dataset", "vqa-rad", "--data-dir", str(data_dir), "--out", str(tmp_path / "o")])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and text in lines[0], result.stderr


def test_an_unreadable_image_is_named_not_dumped(tmp_path):
    rows = [{"image": {"bytes": b"[/bold] not an image " * 3000, "path": None}, "question": "q", "answer": "a"}]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "test-00000-of-00001.parquet")
    result = CliRunner().invoke(app, ["eval", "--model", "tiny", "--weights", "random", "--device", "cpu",
                                      "--dataset", "vqa-rad", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and error == [
        "error: vqa-rad: sample test-0 has an unreadable or missing image: parquet test-00000-of-00001.parquet row "
        "group 0 row 0: cannot read image of 63000 bytes (UnidentifiedImageError): expected a PNG/JPEG/... file; "
        "fix it or pass --skip-bad"]

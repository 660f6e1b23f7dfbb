"""The loader on a large split: 20,000 parquet rows with embedded JPEGs (about 300 MB, written to the test's
temporary folder in the Hugging Face export's layout, 100 rows per row group as `datasets` writes image
data). Reported: time to the first sample (load + open its image) and the loader's own peak memory (peak
RSS above the RSS after imports, in a fresh process), also after walking every 10th image of the split.
Targets (issue 11): under 500 MB, first sample within 2 s.

    python3 -m pytest benchmarks/test_bench_data.py --benchmark-only -s
"""

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ROWS = 20_000
ROW_GROUP = 100
MEMORY_TARGET_MB = 500
FIRST_SAMPLE_TARGET_S = 2.0

PROBE = r"""
import json, sys, time
from pathlib import Path

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

from qgsa_bench.data import load_dataset
import pyarrow.parquet, PIL.Image  # imported before the baseline: not the loader's memory
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
except OSError:
    pass
base = status("VmRSS:")
started = time.perf_counter()
data = load_dataset("vqa-rad", sys.argv[1], "train")
kept, images = data.open_images(data.samples[:1])
first_s = time.perf_counter() - started
peak_first = status("VmHWM:") - base
walked = 0
for sample in data.samples[::10]:
    walked += len(data.open_images([sample])[1])
print(json.dumps({"rows": len(data.samples), "first_sample_s": first_s, "peak_mb_first_sample": peak_first / 2**20,
                  "walk_images": walked, "walk_s": time.perf_counter() - started,
                  "peak_mb_after_walk": (status("VmHWM:") - base) / 2**20, "first_size": list(images[0].size)}))
"""


@pytest.fixture(scope="module")
def big_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big") / "vqa-rad"
    path = folder / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.string())])
    with pq.ParquetWriter(path, schema, use_dictionary=["question", "answer"]) as writer:
        for start in range(0, ROWS, 1000):
            rows = [{"image": {"bytes": jpegs[i % 64] + i.to_bytes(8, "little"),  # unique: bytes after EOI
                               "path": f"synpic{i}.jpg"},
                     "question": f"is there a finding in image {i}?", "answer": "yes" if i % 2 else "no"}
                    for i in range(start, start + 1000)]
            writer.write_table(pa.Table.from_pylist(rows, schema), row_group_size=ROW_GROUP)
    return folder


def probe(folder) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loader_memory_and_first_sample(benchmark, big_split):
    size_mb = sum(p.stat().st_size for p in big_split.rglob("*.parquet")) / 2**20
    result = benchmark.pedantic(probe, args=(big_split,), rounds=3, iterations=1)
    benchmark.extra_info.update({**result, "parquet_mb": size_mb})
    print(f"\nloader: {result['rows']} rows, {size_mb:.0f} MB parquet; first sample {result['first_sample_s']:.2f} s, "
          f"peak {result['peak_mb_first_sample']:.0f} MB; after opening every 10th image ({result['walk_images']}, "
          f"{result['walk_s']:.1f} s) peak {result['peak_mb_after_walk']:.0f} MB")
    assert result["rows"] == ROWS and result["first_size"] == [128, 128]
    assert result["peak_mb_after_walk"] < MEMORY_TARGET_MB
    assert result["first_sample_s"] < FIRST_SAMPLE_TARGET_S

"""Copy a `qgsa train` run's checkpoint without its trainer state: the module's tensors, its config, the base
model it belongs to and the training's provenance. `--checkpoint` reads such a copy; `--resume` refuses it.

    python3 results/shapes/checkpoints/slim.py RUN_FOLDER OUT.pt "THE COMMAND THAT TRAINED IT"
"""

import json
import sys
from pathlib import Path

import torch

KEEP = ("format", "qgsa_state", "qgsa_config", "dims", "base", "train_config", "step", "total_steps")


def slim(run: Path, out: Path, command: str) -> None:
    payload = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    meta = json.loads((run / "meta.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    copy = {key: payload[key] for key in KEEP}
    copy["provenance"] = {"command": command, "recorded_command": meta.get("command"),
                          **{key: meta.get(key) for key in ("date", "git_commit", "torch", "transformers", "device",
                                                            "data_source", "n_samples", "align_encoder")},
                          "wall_s": summary["wall_s"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(copy, out)


if __name__ == "__main__":
    slim(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

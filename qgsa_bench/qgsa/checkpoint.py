"""QGSA checkpoints: the module's tensors only, its config, and which base model they belong to.

Written atomically (temporary file + rename). A checkpoint made on one base architecture is refused
on another (compared by `LoadedModel.architecture_hash`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from qgsa_bench import QGSAError
from qgsa_bench.qgsa.config import QGSAConfig
from qgsa_bench.qgsa.module import QGSAModule

FORMAT = "qgsa-bench/checkpoint/1"


def save_checkpoint(path: str | Path, module: QGSAModule, base: dict, extra: dict | None = None) -> Path:
    """`base` is `LoadedModel.provenance()`; `extra` holds trainer state (optimiser, step, RNG, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "qgsa_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "qgsa_config": module.config.to_dict(),
        "dims": {"d_v": module.d_v, "d_q": module.d_q},
        "base": base,
        **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path: str | Path, base: dict, map_location="cpu") -> tuple[QGSAModule, dict]:
    """Rebuild the module from `path`; refuse it if it was made on another base architecture."""
    path = Path(path)
    if not path.is_file():
        raise QGSAError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many kinds for a corrupt file
        raise QGSAError(f"cannot read checkpoint {path}: {err.__class__.__name__}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QGSAError(f"{path} is not a qgsa-bench checkpoint (expected format {FORMAT})")
    made_on = payload["base"]
    if made_on.get("architecture_hash") != base.get("architecture_hash"):
        raise QGSAError(
            f"checkpoint {path} was trained on '{made_on.get('model')}' (architecture "
            f"{made_on.get('architecture_hash')}), not on '{base.get('model')}' ({base.get('architecture_hash')}): "
            f"use the base model it was trained on"
        )
    module = QGSAModule(payload["dims"]["d_v"], payload["dims"]["d_q"],
                        QGSAConfig.from_dict(payload["qgsa_config"]))
    module.load_state_dict(payload["qgsa_state"])
    module.trained_at = (payload.get("train_config") or {}).get("insert")  # where its scorer was trained
    return module, payload

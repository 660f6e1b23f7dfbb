"""Device and dtype resolution shared by every command, and the provenance every output carries."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from qgsa_bench import QGSAError, __version__

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_COMMAND_LINE: str | None = None


def set_command_line(command: str) -> None:
    """The CLI records the invocation here so that every meta.json can repeat it."""
    global _COMMAND_LINE
    _COMMAND_LINE = command


def command_line() -> str:
    return _COMMAND_LINE or " ".join(sys.argv)


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when torch sees it, else the CPU. Under a launch of several processes (LOCAL_RANK set by
    accelerate launch or torchrun) `auto` and `cuda` mean this process's own GPU, cuda:LOCAL_RANK. Raises
    QGSAError for an unknown device or CUDA asked for without one."""
    import os

    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QGSAError(f"--device {device} asked for, but torch sees no CUDA device: use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise QGSAError(f"unknown device '{device}': use auto, cpu or cuda[:N]") from err


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPU, fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise QGSAError(f"unknown dtype '{dtype}': use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    """HEAD of the checkout the package runs from, + "-dirty" when tracked package files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                                 capture_output=True, text=True, timeout=5, cwd=here)
        return commit + ("-dirty" if changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_meta(device: torch.device, dtype: torch.dtype) -> dict:
    """What every results folder's meta.json records besides the model's own provenance."""
    import transformers

    return {
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "qgsa_bench": __version__,
        "device": device_name(device),
        "dtype": dtype_name(dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }

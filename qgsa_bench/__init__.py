"""qgsa-bench: Question-Guided Sparse Attention for vision-language models, measured end to end."""

__version__ = "0.1.0"


class QGSAError(Exception):
    """An error the user can act on. The CLI prints its message as one line and exits non-zero."""


class NothingToDo(Exception):
    """A rerun of a finished run: every row is already in its results folder. The CLI says so (exit 0)."""

"""`qgsa` under a launcher, with one process made to die: the process of rank DIE_RANK exits (status 3, no
cleanup, as a killed process does) when it starts its DIE_AT-th batch of answers. Used by test_parallel.py to
check what the other processes and the results folder do. Run: torchrun ... tests/launch_dying.py <qgsa args>."""

import os
import sys

from qgsa_bench.cli import app
from qgsa_bench.experiments import evaluate

RANK, DIE_RANK, DIE_AT = int(os.environ["RANK"]), int(os.environ["DIE_RANK"]), int(os.environ["DIE_AT"])
_answer = evaluate._batch_records
_started = []


def _dying(*args, **kwargs):
    _started.append(1)
    if RANK == DIE_RANK and len(_started) == DIE_AT:
        os._exit(3)
    return _answer(*args, **kwargs)


evaluate._batch_records = _dying
sys.argv = ["qgsa", *sys.argv[1:]]
app()

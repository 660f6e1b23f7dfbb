"""Data-parallel runs: the processes a command was launched into (`accelerate launch`, `torchrun`).

A launcher sets WORLD_SIZE, RANK and LOCAL_RANK in every process's environment; a command started without one
is a world of one process and never imports accelerate. `join_world()` (eval, grounding, sweep-budget's
accuracy, train, lmms-eval) starts the process group through accelerate's `PartialState` (gloo on CPUs, NCCL on
GPUs, each process on the GPU of its LOCAL_RANK) with a timeout on every collective. One process's work
(count-flops, ask) runs on the main process alone (`main_only`); base-train refuses a launch (`one_process`);
timing commands refuse it unless --per-process (`timing_alone`).

Shards (`World.mine`): the samples left to do are cut into batches of `--batch` exactly as one process cuts
them, and batch j goes to process j mod W (strided by batch). Every batch is thus the batch a one-process run
answers, so every number but the latency equals the one-process run's, for any W and after a resume by any W.
One round = one batch per process, then one `all_gather_object`: every process holds every record in the data
set's order; only the main process (rank 0) touches the results folder (`driver.Results`). A world larger than
the number of batches leaves processes idle in the last rounds: they gather nothing and wait, no hang.

A process that stops (killed, out of memory) makes the others' next collective fail: they stop with one line
(`WorldLost`), and the folder keeps every finished round for a resume, with no final table written.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass

from qgsa_bench import QGSAError

TIMEOUT_ENV = "QGSA_COLLECTIVE_TIMEOUT_S"  # seconds a collective waits for the slowest process
DEFAULT_TIMEOUT_S = 1800.0


class WorldLost(QGSAError):
    """Another process of the launch stopped, or did not reach a collective within the timeout."""


def launched_size() -> int:
    """The processes the launcher started (WORLD_SIZE; 1 without a launcher). Raises QGSAError for a value that
    is no positive integer."""
    text = os.environ.get("WORLD_SIZE", "1").strip()
    if not text.isdigit() or int(text) < 1:
        raise QGSAError(f"WORLD_SIZE={text!r} in the environment is not a positive number of processes: start the "
                        f"command with accelerate launch or torchrun, or unset WORLD_SIZE")
    return int(text)


def launched_rank() -> int:
    """This process's rank among the launched ones (RANK; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """Whether this process speaks for the launch (rank 0): the one that prints progress and warnings."""
    return launched_rank() == 0


def timeout_s() -> float:
    """Seconds a collective waits (QGSA_COLLECTIVE_TIMEOUT_S, default 1800). Raises QGSAError for a bad value."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise QGSAError(f"{TIMEOUT_ENV}={text!r}: give a positive number of seconds")
    return value


@dataclass(frozen=True)
class World:
    """`size` processes, this one `rank` (0 = main), joined over `backend` (None: alone, no process group)."""

    size: int = 1
    rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rounds(self, n_batches: int) -> int:
        """Rounds of one batch per process that `n_batches` batches take (every process runs them all)."""
        return math.ceil(n_batches / self.size)

    def mine(self, batches: list, round_index: int):
        """This process's batch of round `round_index` (batch round_index * size + rank), None when idle."""
        j = round_index * self.size + self.rank
        return batches[j] if j < len(batches) else None

    def all_gather(self, obj) -> list:
        """Every process's `obj` (picklable), in rank order, on every process. Raises WorldLost."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size
        self._collective(dist.all_gather_object, out, obj)
        return out

    def broadcast(self, obj):
        """The main process's `obj` on every process (the others pass anything). Raises WorldLost."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._collective(dist.broadcast_object_list, box, 0)
        return box[0]

    def _collective(self, fn, *args) -> None:
        try:
            fn(*args)
        except RuntimeError as err:  # gloo/NCCL: a peer closed its connection, or the timeout passed
            first = (str(err).strip().splitlines() or [""])[0][:120]
            raise WorldLost(f"process {self.rank} of {self.size}: another process of this launch stopped or did not "
                            f"answer within {timeout_s():g} s ({type(err).__name__}: {first})") from None

    def meta(self) -> dict:
        """meta.json's `world`: processes, backend and the sharding rule."""
        return {"processes": self.size, "backend": self.backend,
                "shards": "batches of --batch as one process cuts them; batch j on process j mod processes"}


_JOINED: World | None = None


def joined() -> World:
    """The world `join_world` started in this process, else a world of one."""
    return _JOINED or World()


def join_world(device: str = "auto") -> World:
    """The world this process was launched into: alone without a launcher (no import of accelerate), else the
    process group started once through accelerate's PartialState (timeout `timeout_s()`): over gloo when
    `device` is the CPU, torch sees no GPU or `accelerate launch --cpu` asked for it, else over NCCL. Raises
    QGSAError without accelerate installed or for a bad launcher environment."""
    global _JOINED
    if _JOINED is not None:
        return _JOINED
    size = launched_size()
    if size == 1:
        _JOINED = World()
        return _JOINED
    try:
        from accelerate import PartialState
    except ImportError:
        raise QGSAError("a launch of several processes needs accelerate: pip install 'accelerate>=1.0'") from None
    from datetime import timedelta

    import torch

    cpu = (str(device).startswith("cpu") or not torch.cuda.is_available()
           or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s()))
    if state.num_processes != size:
        if state.num_processes == 1 and not torch.cuda.is_available():  # started before us, e.g. lmms-eval's CLI
            raise QGSAError(f"WORLD_SIZE={size} but accelerate was started for one process before qgsa-bench "
                            f"joined (torch sees no GPU, and accelerate then spreads over CPU processes only "
                            f"when told): set ACCELERATE_USE_CPU=1 for the launch, e.g. ACCELERATE_USE_CPU=1 "
                            f"torchrun --nproc_per_node {size} -m lmms_eval --model qgsa ...")
        raise QGSAError(f"WORLD_SIZE={size} but the process group holds {state.num_processes} processes: start the "
                        f"command with accelerate launch or torchrun")
    _JOINED = World(state.num_processes, state.process_index, str(state.backend))
    return _JOINED


def shared_outcome(world: World, call):
    """`call()` run on the main process alone, its value (or its exception, raised again) on every process.
    Raises what `call` raised, on every process; WorldLost when another process stopped."""
    if world.size == 1:
        return call()
    outcome = None
    if world.is_main:
        try:
            outcome = (True, call())
        except Exception as err:  # everything but an interruption, which stops the main process alone
            outcome = (False, _picklable(err))
    ok, value = world.broadcast(outcome)
    if ok:
        return value
    if not world.is_main:
        value.echoed = True  # the main process says it: the CLI prints nothing more for it here
    raise value


def everywhere(world: World, err: Exception) -> Exception:
    """`err`, raised by every process of `world` from the same shared facts: the main process says it, the
    others stay silent (`echoed`). Returns `err`, for `raise everywhere(world, QGSAError(...))`."""
    if not world.is_main:
        err.echoed = True
    return err


def _picklable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def per_process_folder(out, rank: int) -> str:
    """A timing command's folder for one process under `--per-process`: OUT/rank-R."""
    return os.path.join(str(out), f"rank-{rank}")


def timing_alone(command: str, per_process: bool) -> int | None:
    """The rank whose own device a timing command times under `--per-process` (None: no launch, or a launch
    of one). Raises QGSAError under a launch of several processes without `per_process`: processes sharing a
    host or a bus would time each other."""
    size = launched_size()
    if size == 1:
        return None
    if not per_process:
        raise QGSAError(f"{command} times, and this launch started {size} processes: processes sharing a host or a "
                        f"bus would time each other. Run it in one process, or add --per-process (each process times "
                        f"its own device into OUT/rank-R)")
    return launched_rank()


def main_only(command: str, warn=None) -> bool:
    """Whether this process runs `command`, deterministic work of one process (count-flops counts, ask answers one
    question): True without a launch and on the main process of a launch, which says once through `warn` that it
    alone runs it; False on the launch's other processes, which then stop at once (status 0), never joining a
    process group. Raises QGSAError for a bad launcher environment."""
    size = launched_size()
    if size > 1 and is_main_process() and warn is not None:
        warn(f"{command} is one process's work (the same result in any number): process 0 of this launch's {size} "
             f"runs it, the others stop at once")
    return size == 1 or is_main_process()


def one_process(command: str, why: str) -> None:
    """Raises QGSAError under a launch of several processes, saying `why` `command` runs in one process."""
    size = launched_size()
    if size > 1:
        raise QGSAError(f"{command} runs in one process ({why}), and this launch started {size}: run it without "
                        f"accelerate launch or torchrun")


__all__ = ["World", "WorldLost", "everywhere", "in_rounds", "is_main_process", "join_world", "joined", "launched_rank",
           "launched_size", "main_only", "one_process", "per_process_folder", "shared_outcome", "timing_alone",
           "timeout_s"]


def in_rounds(world: World, batches: list, work, data):
    """The batches answered in rounds, one batch per process each (`World.mine`): yields, per round, (every
    record of the round's batches in batch order, the round's batches), on every process. `work(chunk,
    images)` -> this process's records of one batch's readable samples (`data.open_images`); samples dropped
    under --skip-bad reach every process's `data.skipped_ids` in batch order. Raises what `work` or
    `open_images` raises; WorldLost when another process stopped."""
    for index in range(world.rounds(len(batches))):
        batch = world.mine(batches, index)
        records, skipped = [], []
        if batch is not None:
            before = len(data.skipped_ids)
            chunk, images = data.open_images(batch)
            skipped = data.skipped_ids[before:]
            del data.skipped_ids[before:]
            records = work(chunk, images) if chunk else []
        parts = world.all_gather((records, skipped))
        for _, ids in parts:
            data.skipped_ids.extend(i for i in ids if i not in data.skipped_ids)
        yield [r for part, _ in parts for r in part], batches[index * world.size:(index + 1) * world.size]

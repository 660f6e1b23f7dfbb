"""`qgsa train` over several processes (`accelerate launch`, `torchrun`), through accelerate's Accelerator.

--batch is per process: W processes at batch b train on global batches of W x b questions, cut from the
epoch's order exactly as one process at batch W x b cuts them. Process r takes questions r, r + W, ... of each
global batch, and its random draws (Gumbel noise, the random baseline) are rows r::W of the draws the
one-process run makes for the global batch (`selection.ShardDraws`), so every process's generator stays in
step with the one-process run's. After backward the gradients are summed over the processes, each weighted
by its share of the global batch (one all-reduce of the flattened gradients through `Accelerator.reduce`;
the module's methods are called through the run's stages, not one forward, so torch's DDP wrapper, whose
reducer hooks the forward, does not apply). Losses that are means over the questions (L_cs, L_answer, L_attr,
L_sparse, L_entropy, L_budget) then give the one-process update within float tolerance; batch statistics
(L_kvar: Var(c); L_qlen: corr(|Q|, c); L_align's mean over questions with nouns) are computed per process over
its own questions, as DDP computes BatchNorm statistics. Mixed precision (--mixed-precision bf16|fp16) runs
the losses under the Accelerator's autocast, on GPUs only.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from qgsa_bench import QGSAError

MIXED_PRECISION = ("no", "bf16", "fp16")


def check_mixed_precision(mode: str, device: str) -> None:
    """Raises QGSAError for a mode not in MIXED_PRECISION, or bf16/fp16 asked for on the CPU."""
    if mode not in MIXED_PRECISION:
        raise QGSAError(f"--mixed-precision takes {', '.join(MIXED_PRECISION)}, got '{mode}'")
    if mode != "no" and (str(device).startswith("cpu") or not torch.cuda.is_available()):
        raise QGSAError(f"--mixed-precision {mode} runs on GPUs only: drop it on the CPU (or use --dtype)")


class DataParallel:
    """The processes of one training launch (`world`: parallel.World) and their Accelerator."""

    def __init__(self, world, mixed_precision: str = "no", cpu: bool = False):
        from accelerate import Accelerator

        self.world = world
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)

    def shard(self, batch: list) -> list:
        """This process's questions of a global batch: positions rank, rank + W, ... Raises QGSAError when the
        global batch holds fewer questions than processes (a process would have none)."""
        if len(batch) < self.world.size:
            from qgsa_bench.experiments.parallel import everywhere

            raise everywhere(self.world, QGSAError(f"a global batch of {len(batch)} questions leaves a process of {self.world.size} without "
                            f"any: choose --limit and --batch so that every batch (the last of each epoch too) holds "
                            f"at least one question per process"))
        return batch[self.world.rank::self.world.size]

    @contextmanager
    def draws(self, runs, generator, rows: int):
        """Within it, `runs` draw this process's rows of draws made for `rows` questions (`ShardDraws`)."""
        from qgsa_bench.selectors.selection import ShardDraws

        shard = ShardDraws(generator, rows, self.world.rank, self.world.size)
        for run in runs:
            run.generator = shard
        try:
            yield
        finally:
            for run in runs:
                run.generator = generator

    def autocast(self):
        """The Accelerator's autocast context under mixed precision, else a context that changes nothing."""
        if self.accelerator.mixed_precision == "no":
            return nullcontext()
        return self.accelerator.autocast()

    def sync_gradients(self, parameters, own: int, total: int) -> None:
        """Every parameter's gradient := sum over processes of (questions / `total`) x its gradient, where this
        process answered `own` questions (a mean-loss gradient over the global batch). A parameter without a
        gradient on every process keeps none (AdamW then skips it, as the one-process run does)."""
        params = list(parameters)
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=self.accelerator.device)
        has = self.accelerator.reduce(has, reduction="sum")
        used = [p for p, h in zip(params, has.tolist()) if h > 0]
        if not used:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in used])
        flat = self.accelerator.reduce(flat * (own / total), reduction="sum")
        offset = 0
        for p in used:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def mean_values(self, values: dict, own: int, total: int) -> dict:
        """The logged losses as the global batch's: each process's value weighted by its share of questions
        (exact for means over the questions)."""
        parts = self.world.all_gather({k: (v, own) for k, v in values.items()})
        return {k: sum(part[k][0] * part[k][1] for part in parts) / total for k in values}

    def gathered(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """(W x b,) the per-question tensor of every process, concatenated in rank order (None stays None)."""
        if tensor is None:
            return None
        parts = self.world.all_gather(tensor.detach().cpu())
        return torch.cat(parts)

#!/usr/bin/env python3
"""Regression harness: proves that a change to qgsa_bench's internals changes no number.

It drives only the `qgsa` command line (the interface that stays stable across a refactor), in
subprocesses whose working directory is the repository under test (`--root`, default this script's
repository; its code is put first on PYTHONPATH), and collects the facts a refactor must not move:

* FLOPs: every `flops_*` and `formula_*` column, `attn_visual_flops`, `n_visual_tokens`, `k`,
  `visual_tokens_layer_avg`, `prompt_tokens`, `n_patches`, `effective_resolution` per case, from
  `qgsa count-flops` (flops.csv) and `qgsa sweep-budget` (budget.csv);
* accuracy: accuracy.csv of `qgsa sweep-budget --dataset shapes` (accuracy, n, n_scored, k_mean, ...);
* selections: predictions.jsonl of `qgsa eval` for every selector, per (pipeline, question): the
  prediction, its score, k, n_visual_tokens, the selected patches and the multiple-choice fields,
  at batch 1 and 4, at a fixed --k and (qgsa, random, norm) with f_comp's budget.

Timing (latency, *_ms, speedup, throughput, dispersion, rounds, dates, commits) is never collected, so
the comparison is exact: integers as integers, every other cell as the text written in the CSV.
The facts go into one canonical JSON (sorted keys). `--write-reference FILE` stores it; `--reference
FILE` compares, prints every difference (file | row | column: old -> new) and exits 1, else prints a
one-line summary and exits 0.

quick (CI, about 2 minutes on 2 CPU cores): random-weight tiny and llava-tiny models for FLOPs, the
shapes base (results/shapes/base-model) with a random-init QGSA module for accuracy and selections
on 8 questions. full (by hand, about an hour): LLaVA-1.5-7B's count and SmolVLM-256M's 576 px sweep
against the committed results/cpu-llava/flops.csv and results/cpu-selectors-576/budget.csv, the
committed results/shapes/budget command with two QGSA checkpoints retrained by results/selectors/run.sh
against regression/full-accuracy-baseline.csv (the code before the refactor with those checkpoints:
training repeats itself bit for bit here but not the committed checkpoints, so the committed
accuracy.csv differs in the qgsa and qgsa-vision rows), and the selections of every selector on 20
questions against --reference.

  python3 benchmarks/regression.py quick --reference benchmarks/regression/quick-reference.json
  python3 benchmarks/regression.py full --reference benchmarks/regression/full-reference.json \
      --checkpoint runs/shapes/qgsa-attr/checkpoint.pt --vision-checkpoint runs/shapes/qgsa-vision2/checkpoint.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "results/shapes/base-model"
ACCURACY_BASELINE = REPO / "benchmarks/regression/full-accuracy-baseline.csv"
FLOPS_COLUMNS = {"attn_visual_flops", "n_visual_tokens", "k", "visual_tokens_layer_avg", "prompt_tokens",
                 "n_patches", "effective_resolution"}
ACCURACY_COLUMNS = ("accuracy", "n", "n_scored", "k_mean", "n_visual_tokens_mean", "delta_vs_dense_points",
                    "flops_total", "flops_share_of_dense")
PREDICTION_FIELDS = ("prediction", "score", "k", "n_visual_tokens", "selected_patches", "mc_choice", "mc_correct")
ROW_KEYS = {"flops.csv": ("pipeline", "k"), "budget.csv": ("case",),
            "accuracy.csv": ("case", "scope", "question_type"), "predictions.jsonl": ("pipeline", "id")}
TIMING = re.compile(r"_ms|latency|speedup|throughput|dispersion|unstable|rounds|observation_cost|reps_stopped"
                    r"|date|commit")
F_COMP = "qgsa,random,norm"  # the pipelines whose budget comes from f_comp without --k
NO_TIMING = ["--reps", "1", "--warmup", "0"]


def selectors(layer: int) -> str:
    """Every selector and insertion point; `layer` must lie inside the model's vision encoder."""
    return (f"dense,dense-bypass,qgsa,random,norm,random@post-vision,norm@post-vision,random@vision:{layer},"
            f"norm@lm:1,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision,"
            f"qgsa-vision@vision:{layer}")


def eval_jobs(limit: int, tokens: int, ckpt: list[str], vision_ckpt: list[str] | None) -> dict:
    """`qgsa eval` of every selector at --k 5 and (f_comp pipelines) without, at batch 1 and 4; with
    `vision_ckpt`, qgsa-vision@vision:2 runs apart with that checkpoint (eval takes one)."""
    common = ["eval", "--model", BASE, "--dataset", "shapes", "--split", "test", "--limit", str(limit),
              "--device", "cpu", "--max-new-tokens", str(tokens)]
    every = selectors(2).replace(",qgsa-vision,", ",")
    jobs = {}
    for b in (1, 4):
        main = every.replace(",qgsa-vision@vision:2", "") if vision_ckpt else every
        jobs[f"eval-k5-b{b}"] = common + ["--pipelines", main, "--k", "5", "--batch", str(b)] + ckpt
        jobs[f"eval-fcomp-b{b}"] = common + ["--pipelines", F_COMP, "--batch", str(b)] + ckpt
        if vision_ckpt:
            jobs[f"eval-vision-k5-b{b}"] = common + ["--pipelines", "qgsa-vision@vision:2", "--k", "5",
                                                     "--batch", str(b)] + vision_ckpt
    return jobs


def quick_jobs(args) -> dict:
    tiny = ["sweep-budget", "--weights", "random", "--device", "cpu", "--decode-tokens", "2", *NO_TIMING]
    llava = ["count-flops", "--model", "llava-tiny", "--pipelines", selectors(1), "--budgets", "9", "4",
             "--decode-tokens", "2"]
    jobs = {  # the longest first: two runs at a time finish together
        "count-llava-tiny-by-depth": llava + ["--by-depth", "yes"],
        "tiny": tiny + ["--model", "tiny", "--budgets", "4", "2", "--pipelines", selectors(1)],
        "llava-tiny": tiny + ["--model", "llava-tiny", "--budgets", "9", "4", "--pipelines", selectors(1)],
        "count-llava-tiny": llava,
        "shapes-accuracy": ["sweep-budget", "--model", BASE, "--dataset", "shapes", "--split", "test", "--limit",
                            "8", "--device", "cpu", "--budgets", "12", "5", "--pipelines", selectors(2),
                            "--decode-tokens", "2", *NO_TIMING],
    }
    return {**jobs, **eval_jobs(8, 4, [], None)}


def committed_budget_command(args) -> list[str]:
    """results/shapes/budget's own command, with this run's checkpoints and without `qgsa` and --out."""
    argv = shlex.split(json.loads((args.root / "results/shapes/budget/meta.json").read_text())["command"])[1:]
    for i, token in enumerate(argv[:-1]):
        if token == "--checkpoint":
            argv[i + 1] = (f"qgsa-vision={args.vision_checkpoint}" if argv[i + 1].startswith("qgsa-vision=")
                           else str(args.checkpoint))
    cut = argv.index("--out")
    return argv[:cut] + argv[cut + 2:]


def full_jobs(args) -> dict:
    jobs = {
        "a": ["count-flops", "--model", "llava-1.5-7b", "--resolution", "336", "--budgets", "192", "128", "64"],
        "b": ["sweep-budget", "--model", "smolvlm-256m", "--weights", "random", "--device", "cpu", "--resolution",
              "576", "--shares", "0.04", "0.1", "0.25", "0.5", "--pipelines", "dense,qgsa,random,fastv,pdrop,"
              "sparsevlm,visionzip,divprune,downsample,qgsa-vision,random@vision:3", *NO_TIMING],
    }
    if {"c", "d"} & set(args.parts) and not (args.checkpoint and args.vision_checkpoint):
        sys.exit("full parts c and d need --checkpoint and --vision-checkpoint")
    if "c" in args.parts:
        jobs["c"] = committed_budget_command(args)
    if "d" in args.parts:
        ckpt, vision = ["--checkpoint", str(args.checkpoint)], ["--checkpoint", str(args.vision_checkpoint)]
        jobs.update({f"d-{name}": argv for name, argv in eval_jobs(20, 10, ckpt, vision).items()})
    return {name: argv for name, argv in jobs.items() if name.split("-")[0] in args.parts}


def cell(text):
    """A CSV cell as a fact: integers exact, every other value as written."""
    if text is None or text == "":
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def fact_columns(name: str, columns) -> list[str]:
    if name == "accuracy.csv":
        wanted = [c for c in columns if c in ACCURACY_COLUMNS]
    else:
        wanted = [c for c in columns if c.startswith(("flops_", "formula_")) or c in FLOPS_COLUMNS]
    return [c for c in wanted if not TIMING.search(c)]


def read_facts(path: Path, kind: str | None = None) -> dict:
    """{row key: {column: value}} of one results file, read as `kind` (default: its name)."""
    kind = kind or path.name
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        columns = PREDICTION_FIELDS
    else:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        columns = fact_columns(kind, rows[0].keys() if rows else [])
        rows = [{c: cell(v) for c, v in row.items()} for row in rows]
    facts = {}
    for row in rows:
        key = " | ".join(str(row.get(k)) for k in ROW_KEYS[kind])
        while key in facts:
            key += " (again)"
        facts[key] = {c: row.get(c) for c in columns}
    return facts


def run_job(name: str, argv: list[str], args) -> dict:
    """One CLI run into WORK/<name>; the facts of every results file it wrote, or its exit status."""
    out = args.work / name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(args.root), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.monotonic()
    with (args.work / f"{name}.log").open("w") as log:
        proc = subprocess.Popen([*shlex.split(args.qgsa), *argv, "--out", str(out)], cwd=args.root, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    rc = proc.returncode = os.waitstatus_to_exitcode(status)
    print(f"  {name}: exit {rc} in {time.monotonic() - start:.0f} s (CPU {usage.ru_utime + usage.ru_stime:.0f} s)",
          flush=True)
    command = " ".join(argv)
    for path, label in ((args.checkpoint, "CHECKPOINT"), (args.vision_checkpoint, "VISION_CHECKPOINT")):
        command = command.replace(str(path), label) if path else command
    facts = {f"{name}/command": {"argv": {"qgsa": command}}}
    if rc != 0:
        tail = (args.work / f"{name}.log").read_text().splitlines()[-5:]
        print("    " + "\n    ".join(tail), file=sys.stderr)
        return {**facts, f"{name}/exit": {"status": {"rc": rc}}}
    for file in ROW_KEYS:
        if (out / file).is_file():
            facts[f"{name}/{file}"] = read_facts(out / file)
    return facts


def collect(jobs: dict, args) -> dict:
    args.work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        parts = list(pool.map(lambda item: run_job(*item, args), jobs.items()))
    return {key: value for part in parts for key, value in part.items()}


def differences(old: dict, new: dict, label: str = "") -> list[str]:
    """Every (file, row, column) whose value differs, is missing or is new."""
    lines = []
    for file in sorted(set(old) | set(new)):
        a, b = old.get(file, {}), new.get(file, {})
        for row in sorted(set(a) | set(b)):
            if row not in b or row not in a:
                lines.append(f"{label}{file} | {row}: {'missing in new' if row not in b else 'not in reference'}")
                continue
            for col in sorted(set(a[row]) | set(b[row])):
                if a[row].get(col) != b[row].get(col):
                    lines.append(f"{label}{file} | {row} | {col}: {a[row].get(col)!r} -> {b[row].get(col)!r}")
    return lines


def committed_checks(facts: dict, args) -> list[str]:
    """full mode: a, b and c against the files committed in the repository under test."""
    targets = {"a": ("a/flops.csv", args.root / "results/cpu-llava/flops.csv"),
               "b": ("b/budget.csv", args.root / "results/cpu-selectors-576/budget.csv"),
               "c": ("c/accuracy.csv", args.accuracy_reference)}
    lines = []
    for part, (key, path) in targets.items():
        if part in args.parts:
            print(f"  {part}: {key} against {path}")
            old = read_facts(Path(path), key.split("/")[1])
            columns = {c for row in old.values() for c in row}  # the committed file's (an older one has fewer)
            new = {r: {c: v for c, v in row.items() if c in columns} for r, row in facts.get(key, {}).items()}
            lines += differences({key: old}, {key: new}, f"[{Path(path).name}] ")
    return lines


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("quick", "full"))
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--write-reference", type=Path, metavar="FILE")
    ref.add_argument("--reference", type=Path, metavar="FILE")
    p.add_argument("--qgsa", default=f"{shlex.quote(sys.executable)} -m qgsa_bench.cli", help="the CLI to drive")
    p.add_argument("--root", type=Path, default=REPO, help="repository of the code under test (the CLI's cwd)")
    p.add_argument("--work", type=Path, help="results folders and logs (default: a new temporary folder)")
    p.add_argument("--checkpoint", type=Path, help="full c, d: the qgsa-attr QGSA checkpoint")
    p.add_argument("--vision-checkpoint", type=Path, help="full c, d: the qgsa-vision2 checkpoint (vision:2)")
    p.add_argument("--accuracy-reference", type=Path, help="full c: accuracy.csv to compare with (default: "
                   f"{ACCURACY_BASELINE.relative_to(REPO)}, the baseline code's with the checkpoints retrained by "
                   "results/selectors/run.sh; they are not the committed run's, so the committed "
                   "results/shapes/budget/accuracy.csv differs in the qgsa and qgsa-vision rows)")
    p.add_argument("--parts", default="a,b,c,d", help="full: which of a,b,c,d to run")
    p.add_argument("--jobs", type=int, help="CLI runs at a time (default: 2 in quick mode, 1 in full)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: 1 in quick mode, torch's own in full)")
    args = p.parse_args(argv)
    args.parts = args.parts.split(",") if args.mode == "full" else ["quick"]
    quick = args.mode == "quick"
    args.jobs = args.jobs or (2 if quick else 1)
    args.threads = args.threads if args.threads is not None else (1 if quick else 0)
    args.root = args.root.resolve()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="qgsa-regression-"))).resolve()
    args.accuracy_reference = args.accuracy_reference or ACCURACY_BASELINE
    for name in ("checkpoint", "vision_checkpoint", "accuracy_reference"):
        if getattr(args, name):
            setattr(args, name, getattr(args, name).resolve())
    return args


def main(argv=None) -> int:
    args = parse(argv)
    jobs = quick_jobs(args) if args.mode == "quick" else full_jobs(args)
    print(f"{args.mode}: {len(jobs)} CLI runs of `{args.qgsa}` in {args.root}, work {args.work}", flush=True)
    start = time.monotonic()
    facts = collect(jobs, args)
    data = {"mode": args.mode, "facts": facts}
    (args.work / "facts.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    lines = committed_checks(facts, args) if args.mode == "full" else []
    if args.write_reference:  # a run of some --parts keeps the other parts' facts of an existing file
        merge = args.mode == "full" and args.write_reference.is_file()
        old = json.loads(args.write_reference.read_text())["facts"] if merge else {}
        data["facts"] = {**{k: v for k, v in old.items() if k.split("/")[0] not in jobs}, **facts}
        args.write_reference.parent.mkdir(parents=True, exist_ok=True)
        args.write_reference.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.write_reference}")
    elif args.reference:
        ref = json.loads(args.reference.read_text())
        old = {k: v for k, v in ref["facts"].items() if k.split("/")[0] in jobs}
        lines += differences(old, facts)
    values = sum(len(cols) for rows in facts.values() for cols in rows.values())
    failed = [key for key in facts if key.endswith("/exit")]
    for line in lines:
        print(line)
    print(f"{args.mode}: {len(lines)} difference(s), {len(failed)} failed run(s) in {len(jobs)} runs, "
          f"{len(facts)} files, {values} values, {time.monotonic() - start:.0f} s")
    return 1 if lines or (failed and not args.reference) else 0


if __name__ == "__main__":
    sys.exit(main())

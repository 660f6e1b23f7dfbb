"""The Markdown tables, one builder per results CSV: Table 4 (sweep), Table 5 (ablate), Tables 1-2 (eval),
selectors at equal budgets (budget), counted FLOPs (flops); Table 3 and the question pairs (grounding) are in
report/grounding.py. Each writer calls its builder when it finishes (table4.md, table.md, ...); `qgsa report`
calls them all."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench.report.cells import (UNTRAINED_COST, UNTRAINED_COUNT, WILSON_NOTE, Notes, accuracy_with_ci,
                                     case_label, dense_first, flag_untrained, fmt, header, markdown_rows, scored_n,
                                     short_commit, speedup_cell, with_dense_comparison)

TABLE4_NOTE = (
    "FLOPs: fvcore's convention, one multiply-add = one FLOP; attention counted over the full "
    "Lq×Lk rectangle. *Paper* columns are the seed's metrics over the N vision patches "
    "(1−k/N, N/k); *measured* columns compare this row with the dense pipeline at the same "
    "resolution, end to end (vision + selection/connector + prefill + decode). Dense runs at "
    "the next multiple of patch×scale factor when the resolution is not one (see "
    "`effective_resolution` in the CSV). Speedup: ratio of median latencies (dense / this row) with "
    "a 95 % percentile-bootstrap interval over the paired, alternating rounds; where the interval "
    "holds 1 no speedup is claimed; from fewer than 10 rounds the interval is optimistic (simulated "
    "A/A pairs: 7.7 % called different at 5 rounds, 2.5 % at 10: benchmarks/aa_coverage.py). "
    "⚠ unstable: robust dispersion (1.4826 MAD / median) above 10 % (pyperf's limit) or over 10 % of "
    "the rounds off the median by more than 10 robust standard deviations (hyperfine's outlier threshold) "
    "and more than 50 %. "
    "An unstable or short (< 10 rounds) row claims a speedup only where a distribution-free interval "
    "(order statistics of each median) excludes 1 too, shown beside it; else it reads \"not enough "
    "evidence\" (rerun with more --reps or --reps auto, on a quieter machine).")
FFN_NOTE = (
    "Where counted and formula prefill differ: FastV's formula (Chen et al., ECCV 2024; per LM layer "
    "4nd² + 2n²d + 2ndm, summed over layers, n prompt tokens, d LM width, m MLP width) counts a 2-matrix FFN "
    "where LLaMA-family LMs have 3 (gate, up, down: 3ndm, the second formula), ndm per layer more; both formulas "
    "are prefill-only with full-width K/V and no LM head, while the counted prefill has grouped-query K/V and "
    "the head on the last position, and end to end adds the vision encoder, connector and decode.")
PEER_NOTE = (
    "Formulas per LM layer, summed over layers, times the batch: FastV (Chen et al., ECCV 2024) "
    "4nd² + 2n²d + 2ndm; with a gated 3-matrix FFN as LLaMA-family LMs have, 4nd² + 2n²d + 3ndm "
    "(n prompt tokens, d LM width, m MLP width; multiply-adds). Both assume full-width K/V "
    "projections and leave out the LM head; the counted column is fvcore's count of our prefill "
    "(grouped-query K/V, norms, the head on the last position).")


def size_cell(row) -> str:
    """A sweep row's size: one square view of R px, or (sweep-resolution --longest-edge) the longest edge the
    model's processor resized the image to and the views it made."""
    views = row.get("views")
    if views is None or views != views:  # absent or NaN: a square view
        return f"{int(row['resolution'])}px"
    return f"{int(row['resolution'])}px edge, {int(views)} view{'s' if int(views) > 1 else ''}"


def table4_markdown(frame, meta: dict | None) -> str:
    frame = with_dense_comparison(frame)
    if "batch" not in frame:
        frame = frame.assign(batch=(meta or {}).get("settings", {}).get("batch", 1))
    notes = Notes()
    frame = frame.assign(_case=[flag_untrained(case_label(r), r, meta, notes, UNTRAINED_COST) for _, r in frame.iterrows()],
                         _dense=frame["pipeline"] != "dense").sort_values(["batch", "resolution", "_dense", "_case"])
    lines = header(meta, "Efficiency by resolution (cf. the paper's Table 4)")
    lines += markdown_rows(
        ["Batch", "Resolution", "Pipeline", "N patches", "visual tokens to LM", "latency ms median [p10–p90]",
         "measured speedup vs dense [95 % CI]", "images/s", "generated tokens/s", "paper FLOPs↓ (1−k/N)",
         "paper speedup (N/k)", "end-to-end GFLOPs", "measured end-to-end FLOPs↓ vs dense",
         "LM visual-attention FLOPs↓ vs dense"],
        ([int(r["batch"]), size_cell(r), r["_case"], int(r["n_patches"]),
          fmt(r["n_visual_tokens"], ".0f"),
          f"{fmt(r['latency_ms_median'])} [{fmt(r.get('latency_ms_p10'))}–{fmt(r.get('latency_ms_p90'))}]",
          speedup_cell(r, notes), fmt(r.get("throughput_images_per_s"), ".2f"), fmt(r.get("throughput_tokens_per_s"), ".1f"),
          fmt(100 * r["paper_flops_reduction"], ".1f", "%"), fmt(r["paper_theoretical_speedup"], ".1f", "×"),
          fmt(r["flops_total"] / 1e9, ".2f"), fmt(100 * r["measured_flops_reduction"], ".1f", "%"),
          fmt(100 * r["attn_visual_reduction"], ".1f", "%")] for _, r in frame.iterrows()))
    lines += notes.lines() + ["", TABLE4_NOTE]
    if "formula_fastv_prefill" in frame:
        lines += ["", "The peers' accounting (formulas, not counts; for mapping these rows onto published tables):", ""]
        lines += markdown_rows(
            ["Batch", "Resolution", "Pipeline", "prompt tokens n", "visual tokens entering the LM",
             "visual tokens, mean over LM layers", "FastV formula, prefill GFLOPs (2ndm FFN)",
             "3-matrix FFN formula (3ndm)", "counted prefill GFLOPs (fvcore)"],
            ([int(r["batch"]), size_cell(r), r["_case"], fmt(r.get("prompt_tokens"), ".0f"),
              fmt(r["n_visual_tokens"], ".1f"), fmt(r.get("visual_tokens_layer_avg"), ".1f"),
              fmt(r["formula_fastv_prefill"] / 1e9, ".3f"), fmt(r["formula_ffn3_prefill"] / 1e9, ".3f"),
              fmt(r.get("flops_prefill", float("nan")) / 1e9, ".3f")] for _, r in frame.iterrows()))
        lines += ["", PEER_NOTE]
    cost = frame.get("observation_cost_ms")
    if cost is not None and cost.dropna().abs().max() > 0:
        lines.append(f"Cost of observing stages (GPU: the run with CUDA events at the stage boundaries minus the "
                     f"same run as one region, medians): {cost.min():.2f} to {cost.max():.2f} ms "
                     f"(`observation_cost_ms` in the CSV).")
    if meta and meta.get("reps_stopped"):
        lines.append("Repetitions: " + "; ".join(f"{k}{'px' if str(k).isdigit() else ''}: {v}"
                                                 for k, v in meta["reps_stopped"].items()) + ".")
    unsupported = sorted({op for ops in frame.get("unsupported_ops", []).dropna() for op in str(ops).split(";") if op})
    if unsupported:
        lines.append(f"Ops fvcore could not count (not elementwise): {', '.join(unsupported)}.")
    return "\n".join(lines) + "\n"


def write_table4(frame, path: Path, meta: dict | None) -> Path:
    Path(path).write_text(table4_markdown(frame, meta))
    return Path(path)


def table5_markdown(frame, meta: dict | None) -> str:
    notes = Notes()
    lines = header(meta, "Component ablation latency (cf. the paper's Table 5)")
    has_acc = "accuracy" in frame and frame["accuracy"].notna().any()
    lines += markdown_rows(
        ["Configuration", "QGSA weights", "mean k", "latency ms median [p10–p90]", "speedup vs dense [95 % CI]",
         "end-to-end GFLOPs"] + (["n", "accuracy (%) [95 % CI]"] if has_acc else []),
        ([flag_untrained(f"{r.get('label', r['config'])} (`{r['config']}`)", r, meta, notes, UNTRAINED_COST),
          r.get("qgsa_weights", "–"), fmt(r.get("k"), ".1f"),
          f"{fmt(r['latency_ms_median'])} [{fmt(r['latency_ms_p10'])}–{fmt(r['latency_ms_p90'])}]",
          speedup_cell(r, notes), fmt(r.get("flops_total", float("nan")) / 1e9, ".2f")]
         + ([fmt(r.get("accuracy_n"), ".0f"), accuracy_with_ci(r.get("accuracy"), r.get("accuracy_n"))] if has_acc else [])
         for _, r in dense_first(frame).iterrows()))
    lines += notes.lines()
    lines += ["", "Configurations without a checkpoint use the randomly initialised module (labelled "
              "`random-init`): their latencies differ only by noise and by k, not by training. Speedup: "
              "ratio of median latencies with a 95 % paired-bootstrap interval, claimed as in Table 4."
              + (f" {WILSON_NOTE}" if has_acc else "")]
    if meta and isinstance(meta.get("reps_stopped"), str):
        lines.append(f"Repetitions: {meta['reps_stopped']}.")
    return "\n".join(lines) + "\n"


def eval_markdown(frame, meta: dict | None) -> str:
    meta = meta or {}
    lines = header(meta, f"Accuracy on {meta.get('dataset', '?')} ({meta.get('split', '?')}) (cf. the paper's Tables 1-2)")
    if meta.get("weights") == "random":
        lines.append("**Accuracy with random weights is meaningless**: these rows test the plumbing only.\n")
    if meta.get("allocation"):
        lines += [eval_allocation_line(meta), ""]
    lines += [f"Input: {meta['image_input']}.  ", ""] if meta.get("image_input") else []
    notes, frame = Notes(), dense_first(frame)
    tiled = "tiles_mean" in frame and frame["tiles_mean"].notna().any()  # split images: tiles beside k
    lines += markdown_rows(
        ["Pipeline", "n", "Accuracy (%) [95 % CI]", "Δ vs dense (points)", "MC accuracy (%)", "mean k (± std)",
         "visual tokens", *(["tiles encoded (mean)"] if tiled else []), "latency ms / query"],
        ([flag_untrained(r["pipeline"], r, meta, notes), _n(r), accuracy_cell(r, notes),
          fmt(r["delta_vs_dense_points"], "+.2f"), fmt(r.get("mc_accuracy")),
          f"{fmt(r['k_mean'], '.1f')} ± {fmt(r['k_std'], '.1f')}", fmt(r["n_visual_tokens_mean"], ".1f"),
          *([fmt(r["tiles_mean"], ".2f")] if tiled else []), fmt(r["latency_ms_per_query"])]
         for _, r in frame[frame["scope"] == "all"].iterrows()))
    lines += ["", "k and visual tokens count visual tokens kept; a tile selector's budget `--k T` counts tiles encoded "
                  "besides the global view (the tiles column; dense encodes all, global-only none)."] if tiled else []
    types = frame[frame["scope"].isin(["type", "answer_type"])]
    if len(types):
        lines += ["", "Per question type (the paper's section 4.7 / A.1 analysis; VQA-RAD also per answer type):", ""]
        lines += markdown_rows(
            ["Question type", "Pipeline", "n", "Accuracy (%) [95 % CI]", "Δ vs dense", "mean k"],
            ([f"answer type {r['question_type']}" if r["scope"] == "answer_type" else r["question_type"],
              flag_untrained(r["pipeline"], r, meta, notes), _n(r), accuracy_cell(r, notes),
              fmt(r["delta_vs_dense_points"], "+.2f"), fmt(r["k_mean"], ".1f")]
             for _, r in types.sort_values(["scope", "question_type"], kind="stable").iterrows()))
    lines += notes.lines() + ["", WILSON_NOTE]
    if meta.get("scoring"):
        lines += ["", f"Scoring ({meta.get('dataset')}): {meta['scoring']}."]
    return "\n".join(lines) + "\n"


def eval_allocation_line(meta: dict) -> str:
    """Who decided how many (`qgsa eval --allocate`): the allocation and each pipeline's realised budgets."""
    allocation = meta["allocation"]
    source = {"fcomp": f", f_comp of `{meta.get('fcomp_checkpoint')}`",
              "oracle-type": f", best budget per question type on the held-out split '{meta.get('oracle_split')}' "
                             f"({meta.get('oracle_samples', '?')} questions)"}.get(allocation, "")
    parts = [f"{label} mean {a['realised_mean']:.2f} (± {a['budget_std']:.2f}, {a['budget_min']}–{a['budget_max']})"
             + (" — per type " + ", ".join(f"{t} {b}" for t, b in a["oracle_type_budgets"].items())
                + " before the tokens left over go one per question"
                if a.get("oracle_type_budgets") else "")
             for label, a in (meta.get("allocations") or {}).items()]
    return f"Budgets: `--allocate {allocation}`{source}; realised: {'; '.join(parts)}.  "


def _n(row) -> str:
    """The row's questions, and how many of them were scored where that is fewer (no public answers)."""
    n, scored = int(row["n"]), scored_n(row)
    return str(n) if scored == n or scored != scored else f"{n} ({int(scored)} scored)"


def accuracy_cell(row, notes: Notes | None = None) -> str:
    """The accuracy cell with its 95 % Wilson interval: '–' with the reason where no sample of the row has
    public references (a mark whose text `notes` states once)."""
    if row.get("n_scored") == 0:
        return "– " + (notes.mark("*", "no public answers: the split's references are not published, so "
                                       "nothing was scored (predictions are in the folder).") if notes is not None
                       else "(no public answers)")
    return accuracy_with_ci(row["accuracy"], scored_n(row))


def budget_markdown(frame, meta: dict | None, accuracy=None) -> str:
    """Every selector at every budget (dense first): where it sits, tokens, FLOPs by stage, latency, accuracy
    with its n and 95 % interval; per question type, each type's n beside it."""
    meta = meta or {}
    notes = Notes()
    s = meta.get("settings", {})
    where = ((f"a {s['image_size']} image split by the model's processor into {s['resolution']}-px tiles + a global view"
              if (s.get("splitting") or {}).get("split", True) else
              f"a {s['image_size']} image as one {s['resolution']}-px view (image splitting off)") if s.get("image_size")
             else f"{s.get('resolution', '?')} px")
    lines = header(meta, f"Selectors at equal budgets, {where} ({meta.get('dense_visual_tokens', '?')} dense visual "
                         f"tokens)")
    lines += [f"Budget: {meta.get('budget_rule', 'visual tokens reaching the LM')}. FLOPs: multiply-adds (fvcore), "
              "G = 10^9, for the whole batch end to end.  ", ""]
    has_acc = "accuracy" in frame and frame["accuracy"].notna().any()
    n_eval = sorted({int(n) for n in frame.get("n_eval", []) if n == n}) if has_acc else []
    same_n = len(n_eval) == 1
    head = ["selector", "insertion point", "budget", "kept after the last cut", "visual tokens (LM in / layer avg)",
            "vision GFLOPs", "select GFLOPs", "prefill GFLOPs", "end-to-end GFLOPs", "share of dense",
            "latency ms (p10–p90)", "speedup vs dense"] + (
        [f"accuracy % [95 % CI]{f' (n={n_eval[0]})' if same_n else ''}", "Δ vs dense"] if has_acc else [])
    frame = frame.assign(_dense=frame["selector"] != "dense").sort_values(["_dense", "budget", "selector"], kind="stable")
    rows = []
    for _, r in frame.iterrows():
        acc = accuracy_with_ci(r.get("accuracy"), r.get("n_eval"))
        if has_acc and not same_n and r.get("n_eval") == r.get("n_eval"):
            acc += f" (n={fmt(r.get('n_eval'), '.0f')})"
        allocated = _allocated(r)
        rows.append([flag_untrained(case_label(r), r, meta, notes, UNTRAINED_COST), str(r["point"]),
                     f"{int(r['budget'])} mean (± {fmt(r.get('budget_std'), '.1f')})" if allocated
                     else str(int(r["budget"])), fmt(r.get("k"), ".1f" if allocated else ".0f"),
                     f"{fmt(r['n_visual_tokens'], '.0f')} / {fmt(r['visual_tokens_layer_avg'], '.1f')}",
                     fmt(r.get("flops_vision", float("nan")) / 1e9, ".3f"),
                     fmt((r.get("flops_select", 0) + r.get("flops_connector", 0)) / 1e9, ".3f"),
                     fmt(r.get("flops_prefill", float("nan")) / 1e9, ".3f"), fmt(r["flops_total"] / 1e9, ".3f"),
                     fmt(100 * r.get("flops_share_of_dense", float("nan")), ".1f", " %"),
                     f"{fmt(r.get('latency_ms_per_query_eval'), '.1f')} per query answering ¶" if allocated else
                     f"{fmt(r['latency_ms_median'], '.1f')} ({fmt(r.get('latency_ms_p10'), '.1f')}–"
                     f"{fmt(r.get('latency_ms_p90'), '.1f')})", "– (not timed ¶)" if allocated else speedup_cell(r, notes)]
                    + ([acc, fmt(r.get("delta_vs_dense_points"), "+.2f")] if has_acc else []))
    lines += markdown_rows(head, rows)
    types = accuracy[accuracy["scope"] != "all"] if accuracy is not None and len(accuracy) else []
    if len(types):
        lines += ["", "### Accuracy per question type (%, [95 % CI]; n: the type's questions)", ""]
        lines += markdown_rows(*per_type_rows(types, frame, meta, notes))
    if any(_allocated(r) for _, r in frame.iterrows()):
        lines += allocation_lines(frame, types, meta)
    lines += notes.lines()
    if has_acc or len(types):
        lines += ["", WILSON_NOTE]
    if frame.get("unstable") is not None and frame["unstable"].astype(str).str.lower().eq("true").any():
        lines += ["", "⚠ unstable: robust dispersion above 10 % or over 10 % of the rounds far off the median "
                      "(as in Table 4); such a row claims a speedup only where a distribution-free interval agrees."]
    return "\n".join(lines) + "\n"


def _allocated(row) -> bool:
    """A sweep-budget row whose budgets an allocation gave per sample (fcomp, oracle-type): a mean budget."""
    allocation = row.get("allocation")
    return isinstance(allocation, str) and allocation not in ("", "fixed")


ALLOCATION_NOTE = ("¶ an allocation (`--allocate`) gives each question its own budget, holding the row's mean over the "
                   "evaluated set: fcomp in proportion to f_comp(q)'s k_cont (Eq. 2) of {fcomp}, oracle-type the "
                   "budgets per question type that score best on the held-out split {oracle} (what an allocation "
                   "reading only the question's type could do, as far as that split can tell). Such rows are answered and counted (FLOPs: "
                   "the mean over the questions of the FLOPs at each one's budget) but not timed; their latency is "
                   "the answering runs' per query, batches padded to their largest budget, as "
                   "latency_ms_per_query_eval is for every row in budget.csv.")


def allocation_lines(frame, types, meta: dict) -> list[str]:
    """The mean budget each question type received, per allocated case (the learned k per type), and the note."""
    lines = ["", "### Budget per question type (mean visual tokens kept; who decides how many)", ""]
    fcomp = meta.get("fcomp_by_type") or []
    if fcomp:
        lines += ["f_comp's own budget k_cont per type (Eq. 2, its units "
                  f"{meta.get('qgsa_config', {}).get('k_min', '?')}..{meta.get('qgsa_config', {}).get('k_max', '?')}): "
                  + ", ".join(f"{r['question_type']} {r['k_cont_mean']:.1f} (± {r['k_cont_std']:.1f})" for r in fcomp)
                  + ".", ""]
    if not len(types):
        return lines
    qtypes = sorted(types["question_type"].unique())
    rows = []
    for case, part in types[types["scope"] == "type"].groupby("case", sort=False):
        first = part.iloc[0]
        if not _allocated(first) and first.get("allocation") != "fixed":
            continue
        by = dict(zip(part["question_type"], part["k_mean"]))
        rows.append([str(case), str(first.get("allocation")), *(fmt(by.get(t), ".1f") for t in qtypes)])
    lines += markdown_rows(["case", "allocation", *qtypes], rows)
    oracle = meta.get("oracle_split")
    note = ALLOCATION_NOTE.format(fcomp=f"`{meta.get('fcomp_checkpoint')}`" if meta.get("fcomp_checkpoint")
                                  else "the QGSA checkpoint",
                                  oracle=f"'{oracle}' ({meta.get('oracle_samples', '?')} questions)" if oracle else "")
    if not oracle:  # no oracle-type case here: its clause says nothing
        note = note.replace(note[note.index(", oracle-type"):note.index(". Such")], "")
    lines += ["", note]
    return lines


def per_type_rows(types, frame, meta: dict, notes: Notes) -> tuple[list[str], list[list[str]]]:
    """The per-type accuracy table of a budget sweep: one row per case (dense first), one column per type,
    headed by the type's n where every case scored the same questions (else n in each cell)."""
    weights = dict(zip(frame["case"], frame["qgsa_weights"])) if {"case", "qgsa_weights"} <= set(frame) else {}
    types = types.assign(_n=[scored_n(r) for _, r in types.iterrows()])
    qtypes = sorted(types["question_type"].unique())
    ns = {t: sorted({int(n) for n in types.loc[types["question_type"] == t, "_n"] if n == n}) for t in qtypes}
    head = ["case", "budget", *(f"{t} (n={ns[t][0]})" if len(ns[t]) == 1 else t for t in qtypes)]
    rows = []
    order = types.assign(_dense=types["selector"] != "dense").sort_values("_dense", kind="stable")
    for case, part in order.groupby("case", sort=False):
        first = {**part.iloc[0].to_dict(), "qgsa_weights": weights.get(case)}
        by = {r["question_type"]: r for _, r in part.iterrows()}
        cells = []
        for t in qtypes:
            r = by.get(t)
            cell = "–" if r is None else accuracy_with_ci(r["accuracy"], r["_n"], ".1f")
            cells.append(cell + (f" (n={fmt(r['_n'], '.0f')})" if r is not None and len(ns[t]) > 1 else ""))
        rows.append([flag_untrained(case, first, meta, notes), int(part["budget"].iloc[0]), *cells])
    return head, rows


def _tile_unit(settings: dict) -> str:
    """How a count's tile selectors were budgeted (count-flops --tile-unit, --budgets-from-tiles)."""
    text = ("; tile selectors: visual tokens (the global view's, then whole tiles)" if settings.get("tile_unit") ==
            "tokens" else "; tile selectors: tiles encoded besides the global view")
    if settings.get("budgets_from_tiles") or isinstance(settings.get("budgets"), str):  # count-flops: the rule
        text += "; the other selectors at the visual tokens of each tile budget"
    return text


def count_markdown(rows: list[dict], meta: dict) -> str:
    """Counted FLOPs by stage per (pipeline, budget), and the cross-checks (count-flops)."""
    s = meta.get("settings", {})
    unit = ("visual tokens averaged over the LM layers for in-LM selectors" if s.get("budget_unit") == "layer-avg"
            else "visual tokens after the last cut")
    views = any(_given(r.get("image_size")) for r in rows)  # --image-size: the model's own views
    where = f"images split by its processor ({meta.get('views', '?')})" if views else f"at {s.get('resolution', '?')} px"
    lines = [f"## Counted FLOPs by stage: {meta.get('model', '?')} {where}, batch "
             f"{s.get('batch', '?')}, {s.get('decode_tokens', '?')} generated tokens", "",
             f"{meta.get('counting', '')}. Budget: {unit}{_tile_unit(s) if views else ''}. "
             f"Multiply-adds (fvcore), G = 10^9. Weights play no part in "
             f"a count (random weights). Command: `{meta.get('command', '?')}` (commit "
             f"{short_commit(meta.get('git_commit', '?'))}).", ""]
    notes = Notes()
    formulas = any(_given(r.get("formula_fastv_prefill")) for r in rows)
    lines += markdown_rows(
        (["image", "views (encoded / all)"] if views else [])
        + ["pipeline", "budget", "kept after the last cut", "visual tokens (LM in / layer avg)", "prompt", "vision G",
         "select + connector G", "prefill G (counted)"]
        + (["prefill G, FastV formula (2-matrix FFN)", "prefill G, 3-matrix FFN formula"] if formulas else [])
        + ["decode G/token", "end-to-end G", "share of dense", "saved"],
        (([r["image_size"], f"{_count(r.get('views_encoded'))} / {_count(r.get('views'))}"] if views else [])
         + [flag_untrained(r["pipeline"], {**r, "qgsa_weights": meta.get("qgsa_weights")}, meta, notes, UNTRAINED_COUNT),
          _count(r.get("budget", r.get("k"))), _count(r.get("k")),
          f"{fmt(r['n_visual_tokens'], '.0f')} / {fmt(r['visual_tokens_layer_avg'], '.1f')}",
          fmt(r.get("prompt_tokens"), ".0f"), fmt(r["flops_vision"] / 1e9, ".2f"),
          fmt((r.get("flops_select", 0) + r.get("flops_connector", 0)) / 1e9, ".3f"), fmt(r["flops_prefill"] / 1e9, ".1f")]
         + ([fmt(r.get("formula_fastv_prefill", float("nan")) / 1e9, ".1f"),
             fmt(r.get("formula_ffn3_prefill", float("nan")) / 1e9, ".1f")] if formulas else [])
         + [fmt(r.get("flops_decode_per_token", float("nan")) / 1e9, ".2f"),
            fmt(r["flops_total"] / 1e9, ".1f"), fmt(100 * r.get("flops_share_of_dense", float("nan")), ".1f", " %"),
            fmt(r.get("flops_saved_pct"), ".1f", " %")] for r in rows))
    lines += notes.lines()
    lines += ["", FFN_NOTE if formulas else
              "The peers' formula columns are absent: this folder was counted before count-flops wrote them "
              "(rerun the command in meta.json for them)."]
    checks = meta.get("crosscheck") or {}
    vision, lm = checks.get("vision"), checks.get("lm_prefill")
    if vision:
        lines += ["", "Cross-checks:", "",
                  f"* Vision tower as HF runs it (all {vision['vision_layers_total']} layers and its final norm): "
                  f"{vision['vision_tower_hf_forward'] / 1e9:.2f} G"
                  + (f"; published {vision['published_vision'] / 1e9:.2f} G ({vision['published_source']}): "
                     f"{vision['hf_forward_vs_published_pct']:+.2f} %" if vision.get("published_vision") else "")
                  + f". This run stops at the feature layer ({vision['vision_layers_run']} layers): "
                    f"{vision['vision_stage_counted'] / 1e9:.2f} G, {vision['skipped_by_this_run'] / 1e9:.2f} G "
                    f"fewer (layers whose output LLaVA never uses)."]
    if lm:
        lines.append(_prefill_check(lm))
    if views and checks.get("vision_per_view_counted"):
        one = checks["vision_per_view_counted"]
        published = checks.get("vision_per_view_published")
        lines += ["", "Cross-checks:", "", f"* One view's vision stage: {one / 1e9:.2f} G"
                  + (f"; published {published / 1e9:.2f} G ({checks.get('published_source')}): "
                     f"{100 * (one - published) / published:+.2f} %" if published else "") + "."]
        for size, check in checks.items():
            if isinstance(check, dict) and "views" in check:
                lines.append(f"* {size}: dense vision {check['vision_counted'] / 1e9:.2f} G = {check['views']} views x "
                             f"one view ({check['vision_views_times_one_view'] / 1e9:.2f} G"
                             f"{', equal' if check['vision_counted'] == check['vision_views_times_one_view'] else ', DIFFERENT'});"
                             + _prefill_check(check["lm_prefill"])[1:])
    return "\n".join(lines) + "\n"


def _prefill_check(lm: dict) -> str:
    return (f"* Dense LM prefill over {lm['prompt_tokens']} tokens: counted {lm['counted'] / 1e9:.3f} G, "
            f"analytic {lm['analytic'] / 1e9:.3f} G (difference {lm['difference']:,} multiply-adds"
            + (f": {lm['explained']}" if lm.get("explained") not in (None, "exact") else "") + ").")


def _given(value) -> bool:
    return value is not None and value == value


def _count(value) -> str:
    """A whole number of tokens, or '–' where the row has none (dense)."""
    return "–" if value is None or value != value else str(int(value))

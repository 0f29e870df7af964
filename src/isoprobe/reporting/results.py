"""The fine-tuning results, the pre-trained isotropy and the probing of a pipeline run as Markdown,
read from its metrics files (`python -m isoprobe results`). The same numbers as the report's (the
same reader, `reading`, and computations, `numbers`), without the report stage, so it also works
after `dvc exp run isotropy finetune` (no post-fine-tuning stages)."""

from __future__ import annotations

from isoprobe.reporting.html import Table
from isoprobe.reporting.numbers import (
    DEGENERATE_RULE,
    PROBE_KEYS,
    FinetuneResults,
    degenerate_cell,
    finetune_results,
    probe_rows,
    verdict,
)
from isoprobe.reporting.reading import ReportInputs, RunFiles

# (metrics key, column title) of the pre-trained isotropy table, last layer [CLS]
ISOTROPY_COLUMNS = [
    ("isoscore", "IsoScore"),
    ("mean_cosine", "mean cosine"),
    ("std_cv", "std CV"),
    ("std_max_median", "std max/median"),
    ("corr_mean_abs", "mean abs corr"),
    ("centring_ratio", "centring ratio"),
    ("var_share_top10", "var share top 10"),
    ("l2_share_top1", "L2 share top 1"),
    ("effective_rank", "effective rank"),
]


def run_counts(run: RunFiles) -> dict[str, int]:
    """Fine-tuning runs of the grid by outcome: expected, ok, diverged, other, missing."""
    counts = {"expected": 0, "ok": 0, "diverged": 0, "other": 0, "missing": 0}
    for r in run.finetune_runs():
        counts["expected"] += 1
        missing = r.record is None
        counts[
            "missing" if missing else r.status if r.status in ("ok", "diverged") else "other"
        ] += 1
    return counts


def comparison_table(res: FinetuneResults, level: str) -> str:
    """Each method's paired difference to baseline per task: seeds, mean and median Δ, the exact
    sign-flip p and its Holm-adjusted value (over every comparison shown), the `level` bootstrap
    interval of the mean Δ, the method's degenerate runs, and the verdict (on the adjusted p)."""
    rows, family = [], None
    for task in res.tasks:
        for method in res.methods:
            if (r := res.result(task, method)) and (cmp := r.vs_baseline):
                family = cmp["family"]
                rows.append([task, method, r.summary["n"], f"{cmp['delta_mean']:+.4f}",
                             f"{cmp['delta_median']:+.4f}", f"{cmp['p_value']:.3g}",
                             f"{cmp['p_adjusted']:.3g}",
                             f"[{cmp['ci_low']:+.4f}, {cmp['ci_high']:+.4f}]", degenerate_cell(r),
                             verdict(cmp)])  # fmt: skip
    header = ["task", "method", "seeds", "Δ mean", "Δ median", "p (sign-flip)",
              f"p (Holm, {family or 0} tests)", f"{level} interval", "degenerate", "verdict"]  # fmt: skip
    return Table(header, rows, left=2).markdown()


def degenerate_table(res: FinetuneResults) -> str:
    """method x task: the runs whose test score is a constant prediction's, as k/n seeds."""
    header = ["method", *res.tasks]
    rows = [[m, *(degenerate_cell(r) if (r := res.result(t, m)) else "" for t in res.tasks)]
            for m in res.methods]  # fmt: skip
    return Table(header, rows).markdown()


def finetune_tables(run: RunFiles) -> str:
    """Median ± std of the test score per task and method (best marked) with the notes on too few
    seeds, the runs by outcome, then the differences to baseline."""
    res, counts = finetune_results(run), run_counts(run)
    notes = res.notes()
    level = f"{100 * (1 - run.inp.alpha):.0f}%"
    outcomes = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("expected", "ok"))
    lines = [res.table().markdown(), "", *(f"> {n}" for n in notes), *([""] if notes else [])]
    lines += [f"Runs: {outcomes}.", "",
              f"Difference to baseline (test, paired by seed; {level} bootstrap interval of the mean Δ; "
              f"p Holm-adjusted over every comparison; verdict at alpha = {run.inp.alpha:g} on the "
              "adjusted p):", "", comparison_table(res, level), "",
              f"Degenerate runs (test score equal to a constant prediction's: {DEGENERATE_RULE}):",
              "", degenerate_table(res)]  # fmt: skip
    return "\n".join(lines)


def isotropy_table(run: RunFiles) -> str:
    """Pre-trained [CLS] isotropy per task (the headline layer: the last), one row per task."""
    rows = []
    for task in run.inp.tasks:
        m = run.pretrained[task]
        if m is None:
            rows.append([task, "missing", None, None, *[None] * len(ISOTROPY_COLUMNS)])
            continue
        rows.append([task, m.get("split"), m.get("n_rows"), m.get("layer"),
                     *(m.get(k) for k, _ in ISOTROPY_COLUMNS)])  # fmt: skip
    header = ["task", "split", "rows", "layer", *(t for _, t in ISOTROPY_COLUMNS)]
    return Table(header, rows, left=2).markdown()


def probing_tables(run: RunFiles) -> str:
    """Per probed task and encoder group (pre-trained, each method or fine-tuning task/method): one
    row per layer, medians over seeds, as in the report."""
    lines = []
    for task, groups in run.probe_groups.items():
        kind = "POS word vectors" if task in run.inp.token_tasks else "[CLS]"
        probed = [g for g in groups if g.runs]
        if not probed:
            lines += [f"{task} ({kind}): no probe metrics found.", ""]
        for g in probed:
            n = len(g.runs)
            lines += [f"{task} ({kind}), {g.name} ({n} run{'s' * (n > 1)}, medians):", ""]
            lines += [Table(["layer", *PROBE_KEYS], probe_rows(g)).markdown(), ""]
    return "\n".join(lines)


def results_markdown(inp: ReportInputs) -> str:
    """The tables with their headings: fine-tuning (when there is a grid), pre-trained isotropy, and
    probing (when tasks are probed)."""
    run, seeds = RunFiles(inp), ", ".join(map(str, inp.seeds))
    parts = []
    if inp.finetune_tasks and inp.methods:
        parts += [f"### Fine-tuning: test score, median ± std over seeds {seeds}", "",
                  finetune_tables(run), ""]  # fmt: skip
    parts += [f"### Pre-trained isotropy of [CLS] ({inp.model}, last layer)", "",
              isotropy_table(run), ""]  # fmt: skip
    if inp.probe_tasks or inp.token_tasks:
        parts += [f"### Probing by layer ({inp.model})", "", probing_tables(run)]
    return "\n".join(parts)

"""The fine-tuning results and the pre-trained isotropy of a pipeline run as Markdown, read from its
metrics files (`python -m isoprobe results`). Same numbers as the report's, without the report stage,
so it also works after `dvc exp run isotropy finetune` (no post-fine-tuning stages)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from isoprobe.reporting.html import Table
from isoprobe.reporting.report import PROBE_KEYS, Report, ReportInputs

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


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_counts(inp: ReportInputs) -> dict[str, int]:
    """Fine-tuning runs of the grid by outcome: expected, ok, diverged, other, missing."""
    counts = {"expected": 0, "ok": 0, "diverged": 0, "other": 0, "missing": 0}
    for task in inp.finetune_tasks:
        for method in inp.methods:
            for seed in inp.seeds:
                counts["expected"] += 1
                m = _read(inp.root / f"metrics/finetune/{task}/{method}/{seed}.json")
                status = None if m is None else m.get("status")
                key = (
                    "missing" if m is None else status if status in ("ok", "diverged") else "other"
                )
                counts[key] += 1
    return counts


def _verdict(cmp: dict) -> str:
    if not cmp["conclusive"]:
        return f"too few seeds (p >= {cmp['min_p']:.3g})"
    if cmp["significant"]:
        return "better" if cmp["delta_mean"] > 0 else "worse"
    return "no significant difference"


def finetune_tables(inp: ReportInputs) -> str:
    """Median ± std of the test score per task and method, then each method's paired difference to
    baseline (mean Δ, exact sign-flip p, bootstrap interval, verdict)."""
    with tempfile.TemporaryDirectory(prefix="isoprobe-results-") as tmp:
        rep = Report(inp, Path(tmp))
        rep.results()
    level = f"{100 * (1 - inp.alpha):.0f}%"
    rows = []
    for task in inp.finetune_tasks:
        for method in inp.methods:
            d = rep.numbers["results"].get(task, {}).get(method)
            cmp = d and d["vs_baseline"]
            if cmp:
                rows.append([task, method, d["n"], f"{cmp['delta_mean']:+.4f}",
                             f"{cmp['delta_median']:+.4f}", f"{cmp['p_value']:.3g}",
                             f"[{cmp['ci_low']:+.4f}, {cmp['ci_high']:+.4f}]", _verdict(cmp)])  # fmt: skip
    counts = run_counts(inp)
    lines = [
        *rep.md[2:],  # the table and its notes, under our own heading
        "Runs: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("expected", "ok"))
        + ".",
        "",
        f"Difference to baseline (test, paired by seed; {level} bootstrap interval of the mean Δ):",
        "",
        Table(
            [
                "task",
                "method",
                "seeds",
                "Δ mean",
                "Δ median",
                "p (sign-flip)",
                f"{level} interval",
                "verdict",
            ],
            rows,
            left=2,
        ).markdown(),  # fmt: skip
    ]
    return "\n".join(lines)


def isotropy_table(inp: ReportInputs) -> str:
    """Pre-trained [CLS] isotropy per task (the headline layer: the last), one row per task."""
    rows = []
    for task in inp.tasks:
        m = _read(inp.root / f"metrics/isotropy/{task}/pretrained.json")
        if m is None:
            rows.append([task, "missing", None, None, *[None] * len(ISOTROPY_COLUMNS)])
            continue
        rows.append(
            [
                task,
                m.get("split"),
                m.get("n_rows"),
                m.get("layer"),
                *(m.get(k) for k, _ in ISOTROPY_COLUMNS),
            ]  # fmt: skip
        )
    header = ["task", "split", "rows", "layer", *(t for _, t in ISOTROPY_COLUMNS)]
    return Table(header, rows, left=2).markdown()


def probing_tables(inp: ReportInputs) -> str:
    """Per probed task and encoder group (pre-trained, each method or fine-tuning task/method): one row
    per layer, medians over seeds, as in the report."""
    with tempfile.TemporaryDirectory(prefix="isoprobe-results-") as tmp:
        rep = Report(inp, Path(tmp))
        rep.probing()
    lines = []
    for task in inp.probe_tasks + inp.token_tasks:
        kind = "POS word vectors" if task in inp.token_tasks else "[CLS]"
        groups = rep.numbers.get("probing", {}).get(task, {})
        if not groups:
            lines += [f"{task} ({kind}): no probe metrics found.", ""]
        for name, g in groups.items():
            runs = f"{g['runs']} run{'s' * (g['runs'] > 1)}"
            lines += [f"{task} ({kind}), {name} ({runs}, medians):", ""]
            lines += [Table(["layer", *PROBE_KEYS], g["rows"]).markdown(), ""]
    return "\n".join(lines)


def results_markdown(inp: ReportInputs) -> str:
    """The tables with their headings: fine-tuning (when there is a grid), pre-trained isotropy, and
    probing (when tasks are probed)."""
    seeds = ", ".join(map(str, inp.seeds))
    parts = []
    if inp.finetune_tasks and inp.methods:
        parts += [f"### Fine-tuning: test score, median ± std over seeds {seeds}", "",
                  finetune_tables(inp), ""]  # fmt: skip
    parts += [f"### Pre-trained isotropy of [CLS] ({inp.model}, last layer)", "",
              isotropy_table(inp), ""]  # fmt: skip
    if inp.probe_tasks or inp.token_tasks:
        parts += [f"### Probing by layer ({inp.model})", "", probing_tables(inp)]
    return "\n".join(parts)

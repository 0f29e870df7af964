"""The numbers the report and `isoprobe results` both show, computed from what `reading.RunFiles`
read: per task and method the seed statistics of the test score, the paired comparison with
baseline with its p-value Holm-adjusted over every comparison of the grid, and the rate of
degenerate runs (`finetune_results`); the results table (median ± std, the average over tasks, the
best marked), and the probing medians by layer (`probe_rows`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isoprobe.core.scores import MAIN, is_constant_prediction_score
from isoprobe.reporting import stats
from isoprobe.reporting.html import Table
from isoprobe.reporting.reading import FinetuneRun, ProbeGroup, RunFiles, TaskMeta

# isotropy metrics shown per layer (report)
ISO_KEYS = [
    "isoscore",
    "mean_cosine",
    "std_cv",
    "std_max_median",
    "centring_ratio",
    "corr_mean_abs",
    "var_share_top1",
    "var_share_top10",
    "effective_rank",
]
# what makes a run degenerate (`isoprobe.core.scores.constant_prediction_scores`), as shown
DEGENERATE_RULE = "a label's share for accuracy (the majority class's), MCC 0, F1 0 or all-positive, correlation 0"
# probe metrics shown per layer (flat names of `isoprobe.probing.layers.summary`)
PROBE_KEYS = [
    "linear_test",
    "mlp_test",
    "clusters",
    "min_distance",
    "directprobe_test",
    "cka_to_pretrained",
    "similarity_to_pretrained",
]


@dataclass(frozen=True)
class MethodResult:
    """One task x method over the seeds that finished with a test score."""

    task: str
    method: str
    scores: dict[int, float]  # seed -> test score
    summary: dict  # stats.describe: n, median, std, mean, min, max
    # stats.paired_comparison on the shared seeds, with p_adjusted (Holm, over the grid's
    # comparisons), family (their number) and significant_adjusted; None for baseline
    vs_baseline: dict | None
    degenerate: dict[int, bool | None]  # seed -> scored like a constant prediction (None: unknown)

    @property
    def degenerate_rate(self) -> float | None:
        """Share of the scored seeds whose test score is a constant prediction's."""
        return stats.degenerate_rate(list(self.degenerate.values()))

    def numbers(self) -> dict:
        return {**self.summary, "seeds": self.scores, "vs_baseline": self.vs_baseline,
                "degenerate_seeds": sorted(s for s, d in self.degenerate.items() if d),
                "degenerate_rate": self.degenerate_rate}  # fmt: skip

    def cell(self) -> str:
        return f"{self.summary['median']:.4f} ± {self.summary['std']:.4f}"


def compare_methods(
    task: str,
    scores: dict[str, dict[int, float]],
    alpha: float,
    seed: int,
    n_boot: int = 10000,
    degenerate: dict[str, dict[int, bool | None]] | None = None,
) -> dict[str, MethodResult]:
    """The methods of `task` with a score, each against baseline paired by seed (p not adjusted:
    `adjust_p_values` does that over a whole grid). `degenerate`: method -> seed -> flag."""
    base, out, degenerate = scores.get("baseline", {}), {}, degenerate or {}
    for method, by_seed in scores.items():
        if not by_seed:
            continue
        shared, cmp = sorted(set(by_seed) & set(base)), None
        if method != "baseline" and shared:
            cmp = stats.paired_comparison([by_seed[s] for s in shared], [base[s] for s in shared],
                                          alpha=alpha, seed=seed, n_boot=n_boot)  # fmt: skip
        flags = {s: degenerate.get(method, {}).get(s) for s in by_seed}
        out[method] = MethodResult(
            task, method, by_seed, stats.describe(list(by_seed.values())), cmp, flags
        )
    return out


def verdict(cmp: dict) -> str:
    """The verdict of one comparison with baseline, on its Holm-adjusted p when it has one."""
    if not cmp["conclusive"]:
        return f"too few seeds (p >= {cmp['min_p']:.3g})"
    if cmp.get("significant_adjusted", cmp["significant"]):
        return "better" if cmp["delta_mean"] > 0 else "worse"
    if cmp["significant"]:
        return "not after Holm's correction"
    return "no significant difference"


def degenerate_cell(r: MethodResult) -> str:
    """Degenerate runs of a task x method as "k/n" (n: the seeds that could be told)."""
    known = [d for d in r.degenerate.values() if d is not None]
    return f"{sum(known)}/{len(known)}" if known else "n/a"


def adjust_p_values(results: dict[str, dict[str, MethodResult]], alpha: float) -> None:
    """Holm-adjust the sign-flip p-values of every comparison with baseline in `results` (task ->
    method -> result) as one family, in place: p_adjusted, family, significant_adjusted."""
    cmps = [r.vs_baseline for res in results.values() for r in res.values() if r.vs_baseline]
    if not cmps:
        return
    adjusted = stats.holm_adjust([c["p_value"] for c in cmps])
    for c, p in zip(cmps, adjusted, strict=True):
        c["p_adjusted"], c["family"] = float(p), len(cmps)
        c["significant_adjusted"] = bool(c["conclusive"] and p <= alpha)


@dataclass(frozen=True)
class FinetuneResults:
    """Every task x method of the grid: the scores of the finished seeds and their statistics."""

    tasks: list[str]
    methods: list[str]
    metrics: dict[str, str]  # task -> the score compared
    scores: dict[str, dict[str, dict[int, float]]]  # task -> method -> seed -> score
    results: dict[str, dict[str, MethodResult]]  # task -> methods with a score

    def result(self, task: str, method: str) -> MethodResult | None:
        return self.results.get(task, {}).get(method)

    def notes(self) -> list[str]:
        """The notes of the comparisons too few seeds make inconclusive, once each."""
        return sorted({r.vs_baseline["note"] for res in self.results.values() for r in res.values()
                       if r.vs_baseline and not r.vs_baseline["conclusive"]})  # fmt: skip

    def numbers(self) -> dict:
        """task -> method -> describe's numbers, the seeds' scores, the comparison, the
        degenerate runs and the score's name (`metric`)."""
        return {t: {m: r.numbers() | {"metric": self.metrics[t]} for m, r in res.items()}
                for t, res in self.results.items() if res}  # fmt: skip

    def table(self) -> Table:
        """method x task: median ± std, and the average of the medians over tasks (when every
        task has one); the best median per column is marked."""
        header = ["method", *[f"{t} ({self.metrics[t]})" for t in self.tasks], "average"]
        rows = [[m, *(r.cell() if (r := self.result(t, m)) else "" for t in self.tasks),
                 self._average(m)] for m in self.methods]  # fmt: skip
        return Table(header, rows, self._best(rows))

    def _average(self, method: str) -> str | None:
        present = [r.summary["median"] for t in self.tasks if (r := self.result(t, method))]
        return f"{np.mean(present):.4f}" if len(present) == len(self.tasks) else None

    def _best(self, rows: list[list]) -> set[tuple[int, int]]:
        best = set()
        for j, task in enumerate(self.tasks):
            medians = {m: r.summary["median"] for m, r in self.results.get(task, {}).items()}
            if medians:
                top = max(medians.values())
                best |= {(i, j + 1) for i, m in enumerate(self.methods) if medians.get(m) == top}
        avgs = [None if r[-1] is None else float(r[-1]) for r in rows]
        if any(a is not None for a in avgs):
            top = max(a for a in avgs if a is not None)
            best |= {(i, len(self.tasks) + 1) for i, a in enumerate(avgs) if a == top}
        return best


def finetune_results(run: RunFiles) -> FinetuneResults:
    """The fine-tuning grid of `run`: diverged, missing and unscored runs left out; the p-values
    Holm-adjusted over all its comparisons."""
    inp = run.inp
    scores = {t: {m: {r.seed: r.score for r in run.finetune[t, m] if r.score is not None}
                  for m in inp.methods} for t in inp.finetune_tasks}  # fmt: skip
    degenerate = {t: {m: {r.seed: _degenerate(r, run.meta(t)) for r in run.finetune[t, m]
                          if r.score is not None} for m in inp.methods}
                  for t in inp.finetune_tasks}  # fmt: skip
    results = {t: compare_methods(t, scores[t], inp.alpha, inp.seed, inp.n_boot, degenerate[t])
               for t in inp.finetune_tasks}  # fmt: skip
    adjust_p_values(results, inp.alpha)
    metrics = {t: run.meta(t).metric for t in inp.finetune_tasks}
    return FinetuneResults(list(inp.finetune_tasks), list(inp.methods), metrics, scores, results)


def _degenerate(run: FinetuneRun, meta: TaskMeta) -> bool | None:
    """Whether a scored run's test score is a constant prediction's (the test split's label counts
    from meta.json); None when they are missing."""
    metric = run.record.get("metric") or meta.meta.get("metric")
    labels = ((meta.meta.get("counts") or {}).get("test") or {}).get("labels")
    if metric not in MAIN:
        return None
    return is_constant_prediction_score(run.score, metric, labels)


def probe_rows(group: ProbeGroup) -> list[list]:
    """One row per layer: the layer, then each of PROBE_KEYS as the median over the group's runs."""
    from isoprobe.probing.layers import summary

    runs = [r.layers for r in group.runs]
    return [[lay["layer"], *(stats.finite_median([summary(r[i]).get(k) for r in runs])
                             for k in PROBE_KEYS)]
            for i, lay in enumerate(runs[0])]  # fmt: skip

"""The report: one self-contained `index.html` and a `summary.md` (for CI comments) built only from
the DVC-tracked metrics and plot files of a pipeline run (never from MLflow), as `reading` reads
them and `numbers` computes them.

Sections: setup and provenance; pre-trained isotropy; fine-tuning results (median and std over
seeds, mean, min/max, the difference to `baseline` with an exact paired sign-flip test and a
bootstrap interval); gradients at [CLS]; isotropy after fine-tuning; probing; what failed or was
skipped. `build(inputs, out)` writes the files and returns the numbers it showed.

Diverged fine-tuning runs and the downstream outputs marked `status: skipped` (embed_post, probe_post,
probe_cross of a diverged run) are left out of every aggregate (comparisons pair only the seeds both
methods have) and listed in the last section.
"""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from isoprobe.core import layout
from isoprobe.core.repo import git, git_commit
from isoprobe.reporting import plots as report_plots
from isoprobe.reporting.html import Section, Table, esc, image, note, page, para
from isoprobe.reporting.numbers import (
    DEGENERATE_RULE,
    ISO_KEYS,
    PROBE_KEYS,
    FinetuneResults,
    degenerate_cell,
    finetune_results,
    probe_rows,
    verdict,
)
from isoprobe.reporting.reading import (
    DroppedRows,
    FinetuneRun,
    IsotropyGroup,
    IsotropyMetrics,
    ProbeGroup,
    Problem,
    ReportInputs,
    RunFiles,
    Skip,
)
from isoprobe.reporting.stats import finite, finite_median

__all__ = ["Report", "ReportInputs", "build"]

# What the report's "uncommitted changes" looks at: the code and params a run depends on.
CODE_AND_PARAMS = ("src", "stages", "treatments", "dvc.yaml", "params.yaml", "pyproject.toml")
PACKAGES = ["isoprobe", "torch", "transformers", "accelerate", "dvc", "mlflow", "numpy", "scipy",
            "scikit-learn", "highspy", "safetensors"]  # fmt: skip

ISOTROPY_INTRO = (
    "Per layer on the train split (layer 0 = embeddings). IsoScore 1 = isotropic; mean cosine 0 = "
    "no common direction; std CV = spread of per-dimension stds; centring ratio = ||mean|| / RMS "
    "norm; var share = share of variance in the top principal directions."
)
GRADIENTS_INTRO = (
    "||d loss / d [CLS]|| per optimizer step (before clipping), over every step of every seed that "
    "finished (diverged runs are left out: see the last section). Does normalizing [CLS] tame it?"
)
ISOTROPY_AFTER_INTRO = (
    "Last layer [CLS] of each fine-tuned encoder (median over seeds) against the pre-trained "
    "encoder; `head input` is the normalized [CLS] the classifier sees."
)
PROBING_INTRO = (
    "Per layer: linear and MLP probe test accuracy, DirectProbe clusters (= number of labels when "
    "the labels are linearly separable), minimum hull distance between labels, nearest-cluster test "
    "accuracy, CKA and spatial similarity to the pre-trained encoder (median over seeds)."
)
RUNS_INTRO = (
    "Each number above came from a DVC-tracked file written by the run below (open them in "
    "`mlflow ui`)."
)
# probe summary figures (plots/probe_summary/<task>/<name>.png) and what they show
PROBE_FIGURES = (
    ("accuracy", "probe accuracy by layer"),
    ("clusters", "DirectProbe clusters by layer"),
    ("distance", "minimum label distance by layer"),
    ("similarity", "similarity and CKA by layer"),
    ("centroids_pca", "label centroids, PCA, before and after"),
)
DETAIL_HEADER = ["task", "method", "seeds", "median", "std", "mean", "min", "max", "Δ mean", "p",
                 "p (Holm)", "CI low", "CI high", "degenerate", "verdict"]  # fmt: skip


def results_intro(inp: ReportInputs) -> str:
    return (
        f"Test score per task and method over seeds {inp.seeds}: median ± std (the IsoBN paper's "
        "convention), mean and min–max; Δ = method − baseline paired by seed, with the exact "
        f"two-sided sign-flip permutation p-value, that p Holm-adjusted over every comparison of "
        f"the grid (the verdict at alpha = {inp.alpha:g} is on the adjusted p) and a "
        f"{100 * (1 - inp.alpha):.0f}% bootstrap interval of the mean Δ. Degenerate runs: test "
        f"score equal to a constant prediction's ({DEGENERATE_RULE}). The best median per task is "
        "underlined in bold. Diverged runs are left out (see the last section)."
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _yaml(obj: dict) -> str:
    return esc(yaml.safe_dump(obj, sort_keys=False, default_flow_style=None).strip())


class Report:
    """Collects the numbers section by section; `sections` (HTML) and `md` (summary lines)."""

    def __init__(self, inp: ReportInputs, out: Path, run: RunFiles | None = None):
        self.inp, self.out, self.root = inp, out, inp.root
        self.run = run or RunFiles(inp)
        self.sections: list[Section] = []
        self.md: list[str] = []
        self.numbers: dict = {"results": {}, "failures": {}}
        self.run_ids: list[tuple[str, str, str | None]] = []  # (what, run name, id)
        self.problems: list[Problem] = []  # (where, what, count), listed in the last section

    # ---------------------------------------------------------------- helpers

    def _section(self, title: str, anchor: str, intro: str | None = None) -> Section:
        """A new section of the page, in order, opened by the paragraph `intro`."""
        sec = Section(title, anchor)
        if intro:
            sec.add(para(intro))
        self.sections.append(sec)
        return sec

    def _image(self, path: Path, caption: str) -> str:
        """The figure at `path` (relative: to the repository), or a note that it is missing."""
        full = path if path.is_absolute() else self.root / path
        if full.is_file():
            return image(full, caption)
        self.problems.append(Problem(str(path), "figure missing", 1))
        return note(f"figure missing: {path}")

    def _plot_file(self, kind: str, task: str) -> Path:
        return layout.report_plot_file(kind, task, self.out)

    # ---------------------------------------------------------------- 1. setup

    def setup(self) -> None:
        inp = self.inp
        sec = self._section("Setup and provenance", "setup")
        sec.add(f"<p>Model: <code>{esc(inp.model)}</code>. Fine-tuned on {', '.join(inp.finetune_tasks)};"
                f" methods {', '.join(inp.methods)}; seeds {', '.join(map(str, inp.seeds))}.</p>")  # fmt: skip
        header = ["task", "source", "kind", "metric", "labels", *layout.SPLITS]
        rows = [self.run.meta(task).setup_row() for task in inp.tasks]
        sec.add(Table(header, rows, left=4).html())
        sec.add("<h3>Hyper-parameters</h3>", f"<pre>{_yaml(inp.hyper)}</pre>")
        commit = git_commit(self.root)
        sec.add("<h3>Provenance</h3>", Table(["what", "value"], self._provenance(commit), left=2).html())  # fmt: skip
        if (inputs := self._inputs()) is not None:
            sec.add(
                "<h3>Inputs (dvc.lock hashes; source files by sha256)</h3>",
                Table(["stage", "input", "hash"], inputs, left=3).html(),
            )
        self.md += ["# isoprobe report", "", f"Model `{inp.model}`, commit `{(commit or '?')[:10]}`, "
                    f"methods {', '.join(inp.methods)}, seeds {', '.join(map(str, inp.seeds))}.", ""]  # fmt: skip

    def _provenance(self, commit: str | None) -> list[list]:
        """The git commit (and whether its code or params have changes), the fine-tuning devices,
        versions. Outputs are left out of the check: DVC rewrites them during every run."""
        dirty = git(
            self.root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_AND_PARAMS
        )
        devices = sorted({r.device for r in self.run.finetune_runs() if r.device})
        mark = " (uncommitted changes to code or params)" if dirty else ""
        rows = [["git commit", (commit or "unknown") + mark],
                ["fine-tuning device", ", ".join(devices) or "unknown"]]  # fmt: skip
        return rows + [[f"package {k}", v] for k, v in _versions().items()]

    def _inputs(self) -> list[list] | None:
        """The data inputs' hashes: dvc.lock's of the prepare and embed stages, and the source
        files' sha256 from meta.json; None without a dvc.lock."""
        stages = self.run.lock_stages
        if stages is None:
            return None
        rows = [
            [name, d["path"], (d.get("md5") or d.get("hash") or "")[:12]]
            for name, st in stages.items() if name.startswith(("prepare", "embed@"))
            for d in st.get("deps", []) if not d["path"].startswith(("src/", "stages/"))
        ]  # fmt: skip
        for task in self.inp.tasks:
            rows += [[f"prepare@{task} (source)", f["path"], f.get("sha256", "")[:12] + " (sha256)"]
                     for f in self.run.meta(task).source_files]  # fmt: skip
        return rows

    # ---------------------------------------------------------------- 2. pre-trained isotropy

    def isotropy(self) -> None:
        sec = self._section("Pre-trained isotropy of [CLS]", "isotropy", ISOTROPY_INTRO)
        for task in self.inp.tasks:
            m = self.run.pretrained[task]
            if m is None:
                self.problems.append(Problem(task, "pre-trained isotropy metrics missing", 1))
                continue
            self.run_ids.append(("isotropy", f"{task}/isotropy-pretrained", m.mlflow_run_id))
            rows = [[lay["layer"], *(lay.get(k) for k in ISO_KEYS)] for lay in m.layers]
            sec.add(f"<h3>{task}</h3>", Table(["layer", *ISO_KEYS], rows).html())
            d = layout.isotropy_plots_dir(task)
            sec.add(self._image(d / "std_hist.png", f"{task}: distribution of per-dimension std of [CLS]"),
                    self._image(d / "corr_heatmap.png", f"{task}: correlation between [CLS] dimensions"))  # fmt: skip

    # ---------------------------------------------------------------- 3. results

    def results(self) -> None:
        inp, res = self.inp, finetune_results(self.run)
        sec = self._section("Fine-tuning results", "results", results_intro(inp))
        for task in inp.finetune_tasks:
            self._score_problems(task)
            by_method = {m: list(v.values()) for m, v in res.scores[task].items()}
            report_plots.scores(task, res.metrics[task], by_method, self._plot_file("scores", task))
        self.numbers["results"] = res.numbers()
        table, notes = res.table(), res.notes()
        sec.add(table.html(), *(note(n) for n in notes))
        sec.add("<h3>Per task and method</h3>", Table(DETAIL_HEADER, _detail_rows(res), left=2).html())  # fmt: skip
        sec.add(*(self._image(self._plot_file("scores", t), f"{t}: test score per method")
                  for t in inp.finetune_tasks))  # fmt: skip
        self.md += ["## Fine-tuning results (test, median ± std over seeds)", "",
                    table.markdown(), ""]  # fmt: skip
        self.md += [f"> {n}" for n in notes] + ([""] if notes else [])

    def _score_problems(self, task: str) -> None:
        """Missing metrics files and finished runs without a test score; the runs' MLflow ids."""
        for method in self.inp.methods:
            runs: list[FinetuneRun] = self.run.finetune[task, method]
            for r in runs:
                if r.record is None:
                    self.problems.append(Problem(f"{task}/{method}/{r.seed}", "fine-tuning metrics missing", 1))  # fmt: skip
                else:
                    self.run_ids.append(
                        (f"finetune {task}", f"{method}-s{r.seed}", r.mlflow_run_id)
                    )
            if unscored := sum(r.finished and r.score is None for r in runs):
                self.problems.append(Problem(f"{task}/{method}", "finished runs without a finite test score", unscored))  # fmt: skip

    # ---------------------------------------------------------------- 4. gradients

    def gradients(self) -> None:
        sec = self._section("Gradients at [CLS]", "gradients", GRADIENTS_INTRO)
        for task in self.inp.finetune_tasks:
            series = {m: np.asarray([x for r in self.run.finetune[task, m] for x in r.grad_cls()])
                      for m in self.inp.methods}  # fmt: skip
            rows = [[m, v.size, *(np.percentile(v, [50, 90, 99]).tolist() if v.size else [None] * 3),
                     float(v.max()) if v.size else None] for m, v in series.items()]  # fmt: skip
            path = self._plot_file("grad_cls", task)
            report_plots.gradients(task, series, path)
            sec.add(f"<h3>{task}</h3>", Table(["method", "steps", "median", "p90", "p99", "max"], rows).html(),
                    self._image(path, f"{task}: ||d loss / d [CLS]|| per method"))  # fmt: skip

    # ---------------------------------------------------------------- 5. isotropy after

    def isotropy_after(self) -> None:
        sec = self._section("Isotropy after fine-tuning", "isotropy-after", ISOTROPY_AFTER_INTRO)
        header = ["encoder", "vectors", *ISO_KEYS]
        for task in self.inp.finetune_tasks:
            pre = self.run.pretrained[task]
            groups = [g for m in self.inp.methods if (g := self.run.finetuned_isotropy[task, m]).runs]  # fmt: skip
            sec.add(f"<h3>{task}</h3>", Table(header, _isotropy_rows(pre, groups), left=2).html())
            if pre is not None and pre.layers and groups:
                sec.add(self._isoscore_figure(task, pre, groups))

    def _isoscore_figure(self, task: str, pre: IsotropyMetrics, groups: list[IsotropyGroup]) -> str:
        """IsoScore by layer: pre-trained, and each method's median over seeds."""
        pretrained = [v if finite(v := lay.get("isoscore")) else np.nan for lay in pre.layers]
        path = self._plot_file("isoscore", task)
        curves = {g.method: _isoscore_curve(g) for g in groups}
        report_plots.isoscore_by_layer(task, pretrained, curves, path)
        return self._image(path, f"{task}: IsoScore by layer before and after fine-tuning")

    # ---------------------------------------------------------------- 6. probing

    def probing(self) -> None:
        sec = self._section("Probing: how fine-tuning changes the space", "probing", PROBING_INTRO)
        for task, groups in self.run.probe_groups.items():
            kind = "POS word vectors" if task in self.inp.token_tasks else "[CLS]"
            sec.add(f"<h3>{task} ({kind})</h3>")
            for group in groups:
                self._probe_group(sec, group)
            d = layout.probe_summary_dir() / task
            sec.add(
                *(self._image(d / f"{png}.png", f"{task}: {what}") for png, what in PROBE_FIGURES)
            )

    def _probe_group(self, sec: Section, g: ProbeGroup) -> None:
        """The medians by layer of one encoder group; its missing files and probe problems."""
        if g.missing:
            self.problems.append(Problem(f"probe {g.task}/{g.name}", "probe metrics missing", g.missing))  # fmt: skip
        if not g.runs:
            return
        for r in g.runs:
            self.run_ids.append((f"probe {g.task}", f"probe-{r.encoder}", r.mlflow_run_id))
            self.problems += r.problems()
        rows, n = probe_rows(g), len(g.runs)
        sec.add(f"<h4>{g.name} ({n} run{'s' * (n > 1)})</h4>", Table(["layer", *PROBE_KEYS], rows).html())  # fmt: skip
        self.numbers.setdefault("probing", {}).setdefault(g.task, {})[g.name] = {
            "runs": n,
            "rows": rows,  # [layer, *PROBE_KEYS]
        }

    # ---------------------------------------------------------------- 7. failures

    def failures(self) -> None:
        sec = self._section("What failed or was skipped", "failures")
        diverged = [[r.task, r.method, r.seed, r.status, r.record.get("diverged_at_step")]
                    for r in self.run.finetune_runs() if r.record and r.status != "ok"]  # fmt: skip
        skips, dropped = self.run.skips, self.run.dropped
        n_diverged = sum(row[3] == "diverged" for row in diverged)
        self.numbers["failures"] |= {
            "runs": len(diverged),
            "diverged": n_diverged,
            "skipped": len(skips),
            "skips": [list(s) for s in skips],
            "dropped": sum(d.rows for d in dropped),
            "other": len(self.problems),
        }
        sec.add("<h3>Fine-tuning runs not finished normally</h3>",
                Table(["task", "method", "seed", "status", "at step"], diverged, left=4).html()
                if diverged else para("None: every run finished."))  # fmt: skip
        sec.add("<h3>Downstream stages skipped (their fine-tuning did not finish)</h3>",
                Table(["stage", "task", "method", "seed", "reason"], skips, left=5).html()
                if skips else para("None."))  # fmt: skip
        sec.add("<h3>Rows dropped or cut, per reason</h3>",
                Table(["task", "reason", "rows"], dropped, left=2).html() if dropped else para("None."))  # fmt: skip
        sec.add("<h3>Skipped by the probes, missing files</h3>",
                Table(["where", "what", "count"], self.problems, left=2).html()
                if self.problems else para("Nothing missing."))  # fmt: skip
        self.md += _failures_md(diverged, skips, dropped, len(self.problems))

    def runs(self) -> None:
        sec = self._section("MLflow runs", "mlflow", RUNS_INTRO)
        rows = sorted({(w, n, i) for w, n, i in self.run_ids if i})
        sec.add(Table(["stage", "run", "run id"], [list(r) for r in rows], left=3).html())


def _detail_rows(res: FinetuneResults) -> list[list]:
    """Per task and method: seeds, median, std, mean, min, max, then Δ mean, p, the interval and
    the verdict of the comparison with baseline."""
    rows = []
    for task in res.tasks:
        for method in res.methods:
            r = res.result(task, method)
            if r is None:
                rows.append([task, method, 0, *[None] * 11, "no finished run"])
                continue
            d, cmp = r.summary, r.vs_baseline
            stats_ = ((cmp["delta_mean"], cmp["p_value"], cmp["p_adjusted"], cmp["ci_low"], cmp["ci_high"])
                      if cmp else (None,) * 5)  # fmt: skip
            why = (
                verdict(cmp) if cmp else "reference" if method == "baseline" else "no paired seeds"
            )
            rows.append([task, method, d["n"], d["median"], d["std"], d["mean"], d["min"], d["max"],
                         *stats_, degenerate_cell(r), why])  # fmt: skip
    return rows


def _isotropy_rows(pre: IsotropyMetrics | None, groups: list[IsotropyGroup]) -> list[list]:
    """The pre-trained last layer, then per method its last layer and head input vectors: each
    metric's median over seeds."""
    rows = [["pre-trained", "last layer", *((pre.get(k) if pre else None) for k in ISO_KEYS)]]
    parts = (("last layer", lambda m: m.record), ("head input", lambda m: m.head_input))
    for g in groups:
        rows += [[g.method, where, *(finite_median([part(m).get(k) for m in g.runs]) for k in ISO_KEYS)]
                 for where, part in parts]  # fmt: skip
    return rows


def _isoscore_curve(g: IsotropyGroup) -> np.ndarray:
    """IsoScore per layer, the median over seeds (NaN where no seed has one)."""
    medians = [finite_median([m.layers[i].get("isoscore") for m in g.runs])
               for i in range(len(g.runs[0].layers))]  # fmt: skip
    return np.array([np.nan if v is None else v for v in medians])


def _failures_md(diverged: list[list], skips: list[Skip], dropped: list[DroppedRows], problems: int) -> list[str]:  # fmt: skip
    """The summary.md lines of the last section (with every diverged run and skipped output)."""
    n_diverged = sum(row[3] == "diverged" for row in diverged)
    others = len(diverged) - n_diverged
    return ["## Failed or skipped", "",
            f"- fine-tuning runs diverged: {n_diverged}"
            + (f" (and {others} more not finished normally)" if others else "")
            + "".join(f"\n  - {t}/{m}/seed {s}: {st} at step {at}" for t, m, s, st, at in diverged),
            f"- downstream stages skipped: {len(skips)}"
            + "".join(f"\n  - {st} {t}/{m}/seed {s}: {why}" for st, t, m, s, why in skips),
            f"- rows dropped or cut: {sum(d.rows for d in dropped)} (per reason in the report)",
            f"- skipped by the probes or missing (items): {problems}", ""]  # fmt: skip


def build(inp: ReportInputs, out: Path) -> dict:
    """Write `out`/index.html, summary.md and plots/*.png; returns the numbers shown."""
    out.mkdir(parents=True, exist_ok=True)
    layout.report_plots_dir(out).mkdir(exist_ok=True)
    rep = Report(inp, out)
    rep.setup()
    rep.isotropy()
    rep.results()
    rep.gradients()
    rep.isotropy_after()
    if inp.probe_tasks or inp.token_tasks:
        rep.probing()
    rep.failures()
    rep.runs()
    (out / "index.html").write_text(
        page("isoprobe report", rep.sections, f"{inp.model} · {', '.join(inp.finetune_tasks)}"),
        encoding="utf-8",
    )
    (out / "summary.md").write_text("\n".join(rep.md) + "\n", encoding="utf-8")
    return rep.numbers

"""The report: one self-contained `index.html` and a `summary.md` (for CI comments) built only from
the DVC-tracked metrics and plot files of a pipeline run (never from MLflow).

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
import csv
import json
import numbers
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from isoprobe.core.config import Params
from isoprobe.core.scores import MAIN
from isoprobe.reporting import plots as report_plots
from isoprobe.reporting import stats
from isoprobe.reporting.html import Section, Table, esc, image, note, page, para

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
PROBE_KEYS = [
    "linear_test",
    "mlp_test",
    "clusters",
    "min_distance",
    "directprobe_test",
    "cka_to_pretrained",
    "similarity_to_pretrained",
]
PACKAGES = ["isoprobe", "torch", "transformers", "accelerate", "dvc", "mlflow", "numpy", "scipy",
            "scikit-learn", "highspy", "safetensors"]  # fmt: skip


@dataclass
class ReportInputs:
    """What the report covers (from params) and where the files are (`root`: the repository)."""

    root: Path
    model: str
    tasks: list[str]  # pipeline tasks (prepared, isotropy)
    finetune_tasks: list[str]
    methods: list[str]
    seeds: list[int]
    probe_tasks: list[str]
    token_tasks: list[str]
    hyper: dict  # finetune.train and the heads' settings, shown as given
    alpha: float = 0.05
    n_boot: int = 10000
    seed: int = 0

    @classmethod
    def from_params(cls, params: Params, root: Path) -> ReportInputs:
        """The report of a pipeline run with `params` in the repository `root`."""
        ft, pr = params.finetune, params.probe
        return cls(
            root=root,
            model=params.model.name,
            tasks=list(params.pipeline.tasks),
            finetune_tasks=list(ft.tasks),
            methods=list(ft.methods),
            seeds=list(ft.seeds),
            probe_tasks=list(pr.tasks),
            token_tasks=list(pr.token_tasks),
            hyper={
                "finetune.train": ft.train.model_dump(mode="json"),
                "finetune.heads": {
                    m: v for m, v in ft.heads.model_dump(mode="json").items() if m in ft.methods
                },
                "probe": pr.model_dump(mode="json", exclude={"tasks", "token_tasks"}),
            },
            alpha=params.report.alpha,
            n_boot=params.report.n_boot,
            seed=params.report.seed,
        )


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _finite(x: object) -> bool:
    """A real number that is not NaN or infinite (None, NaN, text: False)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and bool(np.isfinite(x))


def _median(values: list) -> float | None:
    v = [x for x in values if _finite(x)]
    return float(np.median(v)) if v else None


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class Report:
    """Collects the numbers section by section; `sections` (HTML) and `md` (summary lines)."""

    def __init__(self, inp: ReportInputs, out: Path):
        self.inp, self.out, self.root = inp, out, inp.root
        self.plots = out / "plots"
        self.sections: list[Section] = []
        self.md: list[str] = []
        self.numbers: dict = {"results": {}, "failures": {}}
        self.run_ids: list[tuple[str, str, str]] = []  # (what, run name, id)
        self.problems: list[tuple[str, str, object]] = []  # (where, what, count)
        self.skips: list[list] = []  # [stage, task, method, seed, reason] of skipped outputs

    # ---------------------------------------------------------------- helpers

    def _finetune(self, task: str, method: str, seed: int) -> dict | None:
        return _read(self.root / f"metrics/finetune/{task}/{method}/{seed}.json")

    def _skipped(
        self, r: dict | None, stage: str, task: str, method: str, seed: int | None
    ) -> bool:
        """Whether `r` is a stage output marked skipped (then listed in the last section)."""
        if not r or r.get("status") != "skipped":
            return False
        row = [r.get("stage") or stage, task, method, seed, r.get("reason") or "skipped"]
        if row not in self.skips:
            self.skips.append(row)
        return True

    def _image(self, path: Path, caption: str) -> str:
        full = path if path.is_absolute() else self.root / path
        if full.is_file():
            return image(full, caption)
        self.problems.append((str(path), "figure missing", 1))
        return note(f"figure missing: {path}")

    # ---------------------------------------------------------------- 1. setup

    def setup(self) -> None:
        inp, sec = self.inp, Section("Setup and provenance", "setup")
        rows = []
        for task in inp.tasks:
            meta = _read(self.root / f"data/prepared/{task}/meta.json") or {}
            counts = meta.get("counts", {})
            labels = meta.get("label_names") or []
            rows.append(
                [task, meta.get("source", ""), meta.get("kind", ""), meta.get("metric", ""),
                 len(labels) if labels else meta.get("label_type", ""),
                 *(counts.get(s, {}).get("rows") for s in ("train", "dev", "test"))]
            )  # fmt: skip
        sec.add(f"<p>Model: <code>{esc(inp.model)}</code>. Fine-tuned on {', '.join(inp.finetune_tasks)};"
                f" methods {', '.join(inp.methods)}; seeds {', '.join(map(str, inp.seeds))}.</p>")  # fmt: skip
        sec.add(
            Table(
                ["task", "source", "kind", "metric", "labels", "train", "dev", "test"], rows, left=4
            ).html()
        )
        sec.add("<h3>Hyper-parameters</h3>", f"<pre>{_yaml(inp.hyper)}</pre>")
        commit = _git(self.root, "rev-parse", "HEAD")
        dirty = _git(self.root, "status", "--porcelain", "--untracked-files=no")
        device = sorted({
            f"{m.get('device')} x{m.get('processes', 1)} ({m.get('threads')} threads)"
            for t in inp.finetune_tasks for me in inp.methods for s in inp.seeds
            if (m := self._finetune(t, me, s))
        })  # fmt: skip
        prov = [["git commit", (commit or "unknown") + (" (uncommitted changes)" if dirty else "")],
                ["fine-tuning device", ", ".join(device) or "unknown"]]  # fmt: skip
        prov += [[f"package {k}", v] for k, v in _versions().items()]
        sec.add("<h3>Provenance</h3>", Table(["what", "value"], prov, left=2).html())
        lock = self.root / "dvc.lock"
        if lock.is_file():
            stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
            inputs = [
                [name, d["path"], (d.get("md5") or d.get("hash") or "")[:12]]
                for name, st in stages.items() if name.startswith(("prepare", "embed@"))
                for d in st.get("deps", []) if not d["path"].startswith(("src/", "stages/"))
            ]  # fmt: skip
            for task in inp.tasks:
                meta = _read(self.root / f"data/prepared/{task}/meta.json") or {}
                inputs += [
                    [f"prepare@{task} (source)", f["path"], f.get("sha256", "")[:12] + " (sha256)"]
                    for f in meta.get("source_files", [])
                ]
            sec.add(
                "<h3>Inputs (dvc.lock hashes; source files by sha256)</h3>",
                Table(["stage", "input", "hash"], inputs, left=3).html(),
            )
        self.md += ["# isoprobe report", "", f"Model `{inp.model}`, commit `{(commit or '?')[:10]}`, "
                    f"methods {', '.join(inp.methods)}, seeds {', '.join(map(str, inp.seeds))}.", ""]  # fmt: skip
        self.sections.append(sec)

    # ---------------------------------------------------------------- 2. pre-trained isotropy

    def isotropy(self) -> None:
        sec = Section("Pre-trained isotropy of [CLS]", "isotropy")
        sec.add(para("Per layer on the train split (layer 0 = embeddings). IsoScore 1 = isotropic; "
                     "mean cosine 0 = no common direction; std CV = spread of per-dimension stds; "
                     "centring ratio = ||mean|| / RMS norm; var share = share of variance in the top "
                     "principal directions."))  # fmt: skip
        for task in self.inp.tasks:
            m = _read(self.root / f"metrics/isotropy/{task}/pretrained.json")
            if m is None:
                self.problems.append((task, "pre-trained isotropy metrics missing", 1))
                continue
            self.run_ids.append(("isotropy", f"{task}/isotropy-pretrained", m.get("mlflow_run_id")))
            rows = [[lay["layer"], *(lay.get(k) for k in ISO_KEYS)] for lay in m["layers"]]
            sec.add(f"<h3>{task}</h3>", Table(["layer", *ISO_KEYS], rows).html())
            d = Path(f"plots/isotropy/{task}/pretrained")
            sec.add(self._image(d / "std_hist.png", f"{task}: distribution of per-dimension std of [CLS]"),
                    self._image(d / "corr_heatmap.png", f"{task}: correlation between [CLS] dimensions"))  # fmt: skip
        self.sections.append(sec)

    # ---------------------------------------------------------------- 3. results

    def results(self) -> None:
        inp = self.inp
        sec = Section("Fine-tuning results", "results")
        sec.add(para(f"Test score per task and method over seeds {inp.seeds}: median ± std (the IsoBN "
                     "paper's convention), mean and min–max; Δ = method − baseline paired by seed, "
                     "with the exact two-sided sign-flip permutation p-value and a "
                     f"{100 * (1 - inp.alpha):.0f}% bootstrap interval of the mean Δ. The best "
                     "median per task is underlined in bold. Diverged runs are left out (see the "
                     "last section)."))  # fmt: skip
        header = ["method", *[f"{t} ({self._metric(t)})" for t in inp.finetune_tasks], "average"]
        main_rows, best = [], set()
        medians: dict[str, dict[str, float]] = {t: {} for t in inp.finetune_tasks}
        detail_rows, notes = [], set()
        for task in inp.finetune_tasks:
            per_method = {}
            for method in inp.methods:
                runs = {s: self._finetune(task, method, s) for s in inp.seeds}
                ok = {s: r for s, r in runs.items() if r and r.get("status") == "ok"}
                for s, r in runs.items():
                    if r is None:
                        self.problems.append(
                            (f"{task}/{method}/{s}", "fine-tuning metrics missing", 1)
                        )
                    else:
                        self.run_ids.append(
                            (f"finetune {task}", f"{method}-s{s}", r.get("mlflow_run_id"))
                        )
                scores = {
                    s: float(v)
                    for s, r in ok.items()
                    if _finite(
                        v := (r.get("test") or {}).get(MAIN.get(r.get("metric"), r.get("metric")))
                    )
                }
                if len(scores) < len(ok):
                    self.problems.append((f"{task}/{method}", "finished runs without a finite test score",
                                          len(ok) - len(scores)))  # fmt: skip
                per_method[method] = scores
            report_plots.scores(task, self._metric(task), {m: list(v.values()) for m, v in per_method.items()},
                                self.plots / f"scores_{task}.png")  # fmt: skip
            base = per_method.get("baseline", {})
            for method, scores in per_method.items():
                if not scores:
                    detail_rows.append([task, method, 0, *[None] * 9, "no finished run"])
                    continue
                d = stats.describe(list(scores.values()))
                medians[task][method] = d["median"]
                cmp = None
                shared = sorted(set(scores) & set(base))
                if method != "baseline" and shared:
                    cmp = stats.paired_comparison(
                        [scores[s] for s in shared], [base[s] for s in shared],
                        alpha=inp.alpha, seed=inp.seed,
                    )  # fmt: skip
                    if not cmp["conclusive"]:
                        notes.add(cmp["note"])
                self.numbers["results"].setdefault(task, {})[method] = {
                    **d,
                    "seeds": scores,
                    "vs_baseline": cmp,
                }
                detail_rows.append([
                    task, method, d["n"], d["median"], d["std"], d["mean"], d["min"], d["max"],
                    *((cmp["delta_mean"], cmp["p_value"], cmp["ci_low"], cmp["ci_high"], cmp["note"]) if cmp
                      else (None, None, None, None, "reference" if method == "baseline" else "no paired seeds")),
                ])  # fmt: skip
        for method in inp.methods:
            row: list[object] = [method]
            for task in inp.finetune_tasks:
                d = self.numbers["results"].get(task, {}).get(method)
                row.append(f"{d['median']:.4f} ± {d['std']:.4f}" if d else "")
            present = [medians[t][method] for t in inp.finetune_tasks if method in medians[t]]
            row.append(
                f"{np.mean(present):.4f}" if len(present) == len(inp.finetune_tasks) else None
            )
            main_rows.append(row)
        for j, task in enumerate(inp.finetune_tasks):
            if medians[task]:
                top = max(medians[task].values())
                best |= {
                    (i, j + 1) for i, m in enumerate(inp.methods) if medians[task].get(m) == top
                }
        avgs = [None if r[-1] is None else float(r[-1]) for r in main_rows]
        if any(a is not None for a in avgs):
            top = max(a for a in avgs if a is not None)
            best |= {(i, len(header) - 1) for i, a in enumerate(avgs) if a == top}
        table = Table(header, main_rows, best)
        sec.add(table.html())
        if notes:
            sec.add(*(note(n) for n in sorted(notes)))
        sec.add("<h3>Per task and method</h3>", Table(
            ["task", "method", "seeds", "median", "std", "mean", "min", "max", "Δ mean", "p",
             "CI low", "CI high", "verdict"], detail_rows, left=2).html())  # fmt: skip
        sec.add(
            *(
                self._image(self.plots / f"scores_{t}.png", f"{t}: test score per method")
                for t in inp.finetune_tasks
            )
        )
        self.md += [
            "## Fine-tuning results (test, median ± std over seeds)",
            "",
            table.markdown(),
            "",
        ]
        self.md += [f"> {n}" for n in sorted(notes)] + ([""] if notes else [])
        self.sections.append(sec)

    def _metric(self, task: str) -> str:
        """The score compared across methods: the task's main score (Pearson/Spearman mean for
        the correlation metric)."""
        meta = _read(self.root / f"data/prepared/{task}/meta.json") or {}
        metric = meta.get("metric", "score")
        return MAIN.get(metric, metric)

    # ---------------------------------------------------------------- 4. gradients

    def gradients(self) -> None:
        inp = self.inp
        sec = Section("Gradients at [CLS]", "gradients")
        sec.add(para("||d loss / d [CLS]|| per optimizer step (before clipping), over every step of "
                     "every seed that finished (diverged runs are left out: see the last section). "
                     "Does normalizing [CLS] tame it?"))  # fmt: skip
        for task in inp.finetune_tasks:
            series, rows = {}, []
            for method in inp.methods:
                values = []
                for s in inp.seeds:
                    path = self.root / f"plots/finetune/{task}/{method}/{s}.csv"
                    run = self._finetune(task, method, s)
                    if path.is_file() and (run or {}).get("status", "ok") == "ok":
                        with path.open(encoding="utf-8") as f:
                            values += [
                                float(r["grad_cls"]) for r in csv.DictReader(f) if r.get("grad_cls")
                            ]
                v = np.asarray([x for x in values if np.isfinite(x)])
                series[method] = v
                rows.append([method, v.size, *(np.percentile(v, [50, 90, 99]).tolist() if v.size else [None] * 3),
                             float(v.max()) if v.size else None])  # fmt: skip
            path = self.plots / f"grad_cls_{task}.png"
            report_plots.gradients(task, series, path)
            sec.add(f"<h3>{task}</h3>", Table(["method", "steps", "median", "p90", "p99", "max"], rows).html(),
                    self._image(path, f"{task}: ||d loss / d [CLS]|| per method"))  # fmt: skip
        self.sections.append(sec)

    # ---------------------------------------------------------------- 5. isotropy after

    def isotropy_after(self) -> None:
        inp = self.inp
        sec = Section("Isotropy after fine-tuning", "isotropy-after")
        sec.add(para("Last layer [CLS] of each fine-tuned encoder (median over seeds) against the "
                     "pre-trained encoder; `head input` is the normalized [CLS] the classifier sees."))  # fmt: skip
        for task in inp.finetune_tasks:
            pre = _read(self.root / f"metrics/isotropy/{task}/pretrained.json")
            rows = [["pre-trained", "last layer", *((pre or {}).get(k) for k in ISO_KEYS)]]
            curves = {}
            for method in inp.methods:
                runs = [
                    r
                    for s in inp.seeds
                    if (r := _read(self.root / f"metrics/isotropy/{task}/{method}/{s}.json"))
                    and not self._skipped(r, "embed_post", task, method, s)
                    and r.get("layers")
                ]
                if not runs:
                    continue
                for where, part in (
                    ("last layer", lambda r: r),
                    ("head input", lambda r: r.get("head_input") or {}),
                ):
                    rows.append(
                        [
                            method,
                            where,
                            *(_median([part(r).get(k) for r in runs]) for k in ISO_KEYS),
                        ]
                    )
                curves[method] = np.array([
                    np.nan if (v := _median([r["layers"][i].get("isoscore") for r in runs])) is None else v
                    for i in range(len(runs[0]["layers"]))
                ])  # fmt: skip
            header = ["encoder", "vectors", *ISO_KEYS]
            sec.add(f"<h3>{task}</h3>", Table(header, rows, left=2).html())
            if pre and curves:
                path = self.plots / f"isoscore_{task}.png"
                report_plots.isoscore_by_layer(
                    task,
                    [
                        lay.get("isoscore") if _finite(lay.get("isoscore")) else np.nan
                        for lay in pre["layers"]
                    ],
                    curves,
                    path,
                )
                sec.add(
                    self._image(path, f"{task}: IsoScore by layer before and after fine-tuning")
                )
        self.sections.append(sec)

    # ---------------------------------------------------------------- 6. probing

    def probing(self) -> None:
        inp = self.inp
        sec = Section("Probing: how fine-tuning changes the space", "probing")
        sec.add(para("Per layer: linear and MLP probe test accuracy, DirectProbe clusters (= number "
                     "of labels when the labels are linearly separable), minimum hull distance "
                     "between labels, nearest-cluster test accuracy, CKA and spatial similarity to "
                     "the pre-trained encoder (median over seeds)."))  # fmt: skip
        for task in inp.probe_tasks + inp.token_tasks:
            # group -> [(file, stage, task label, method, seed)]
            groups = {"pre-trained": [(self.root / f"metrics/probe/{task}/pretrained.json", "probe", task, "pretrained", None)]}  # fmt: skip
            if task in inp.token_tasks:
                groups |= {f"{ft}/{m}": [(self.root / f"metrics/probe/{task}/{ft}/{m}/{s}.json", "probe_cross",
                                          f"{task} (encoder fine-tuned on {ft})", m, s) for s in inp.seeds]
                           for ft in inp.finetune_tasks for m in inp.methods}  # fmt: skip
            else:
                groups |= {m: [(self.root / f"metrics/probe/{task}/{m}/{s}.json", "probe_post", task, m, s)
                               for s in inp.seeds] for m in inp.methods}  # fmt: skip
            kind = "POS word vectors" if task in inp.token_tasks else "[CLS]"
            sec.add(f"<h3>{task} ({kind})</h3>")
            for name, files in groups.items():
                found = [(_read(f), where) for f, *where in files]
                if missing := sum(r is None for r, _ in found):
                    self.problems.append((f"probe {task}/{name}", "probe metrics missing", missing))
                runs = [r for r, where in found if r and not self._skipped(r, *where)]
                if not runs:
                    continue
                for r in runs:
                    self.run_ids.append(
                        (f"probe {task}", f"probe-{r.get('encoder', name)}", r.get("mlflow_run_id"))
                    )
                    self._probe_problems(task, name, r)
                from isoprobe.probing.layers import summary

                rows = [[lay["layer"], *(_median([summary(r["layers"][i]).get(k) for r in runs]) for k in PROBE_KEYS)]
                        for i, lay in enumerate(runs[0]["layers"])]  # fmt: skip
                sec.add(f"<h4>{name} ({len(runs)} run{'s' * (len(runs) > 1)})</h4>",
                        Table(["layer", *PROBE_KEYS], rows).html())  # fmt: skip
                self.numbers.setdefault("probing", {}).setdefault(task, {})[name] = {
                    "runs": len(runs),
                    "rows": rows,  # [layer, *PROBE_KEYS]
                }
            d = Path(f"plots/probe_summary/{task}")
            for png, what in (("accuracy", "probe accuracy by layer"), ("clusters", "DirectProbe clusters by layer"),
                              ("distance", "minimum label distance by layer"), ("similarity", "similarity and CKA by layer"),
                              ("centroids_pca", "label centroids, PCA, before and after")):  # fmt: skip
                sec.add(self._image(d / f"{png}.png", f"{task}: {what}"))
        self.sections.append(sec)

    def _probe_problems(self, task: str, name: str, r: dict) -> None:
        where = f"probe {task}/{r.get('encoder', name)}"
        cut = r.get("words_cut_by_max_length") or 0
        cut = sum(cut.values()) if isinstance(cut, dict) else cut
        if cut:
            self.problems.append((where, "words cut by max length (not probed)", cut))
        for lay in r.get("layers", []):
            dp = lay.get("directprobe") or {}
            for split in ("train", "test"):
                part = dp.get(split) or {}
                for key, what in (
                    (
                        "conflicting_rows",
                        "DirectProbe: rows left out (identical vectors, different labels)",
                    ),
                    (
                        "undecided_pairs",
                        "DirectProbe: cluster pairs left undecided (refused merges)",
                    ),
                ):
                    if part.get(key):
                        self.problems.append(
                            (f"{where} layer {lay['layer']} {split}", what, part[key])
                        )

    # ---------------------------------------------------------------- 7. failures

    def failures(self) -> None:
        inp = self.inp
        sec = Section("What failed or was skipped", "failures")
        diverged = []
        for task in inp.finetune_tasks:
            for method in inp.methods:
                for s in inp.seeds:
                    r = self._finetune(task, method, s)
                    if r and r.get("status") != "ok":
                        diverged.append(
                            [task, method, s, r.get("status"), r.get("diverged_at_step")]
                        )
        self.numbers["failures"]["runs"] = len(diverged)
        sec.add("<h3>Fine-tuning runs not finished normally</h3>",
                Table(["task", "method", "seed", "status", "at step"], diverged, left=4).html()
                if diverged else para("None: every run finished."))  # fmt: skip
        n_diverged = sum(r[3] == "diverged" for r in diverged)
        self.numbers["failures"]["diverged"] = n_diverged
        self.numbers["failures"]["skipped"] = len(self.skips)
        self.numbers["failures"]["skips"] = [list(r) for r in self.skips]
        sec.add("<h3>Downstream stages skipped (their fine-tuning did not finish)</h3>",
                Table(["stage", "task", "method", "seed", "reason"], self.skips, left=5).html()
                if self.skips else para("None."))  # fmt: skip
        dropped = []
        for task in inp.tasks:
            meta = _read(self.root / f"data/prepared/{task}/meta.json") or {}
            for reason, n in (meta.get("dropped") or {}).items():
                if n:
                    dropped.append([task, reason, n])
            info = _read(self.root / f"data/embeddings/pretrained/{task}/info.json") or {}
            for split, s in (info.get("splits") or {}).items():
                for key in ("truncated_rows", "words_cut_by_max_length"):
                    if s.get(key):
                        dropped.append(
                            [task, f"{key} ({split}, max_length {info.get('max_length')})", s[key]]
                        )
        self.numbers["failures"]["dropped"] = sum(r[2] for r in dropped)
        sec.add("<h3>Rows dropped or cut, per reason</h3>",
                Table(["task", "reason", "rows"], dropped, left=2).html() if dropped else para("None."))  # fmt: skip
        self.numbers["failures"]["other"] = len(self.problems)
        sec.add("<h3>Skipped by the probes, missing files</h3>",
                Table(["where", "what", "count"], [list(p) for p in self.problems], left=2).html()
                if self.problems else para("Nothing missing."))  # fmt: skip
        others = len(diverged) - n_diverged
        self.md += ["## Failed or skipped", "",
                    f"- fine-tuning runs diverged: {n_diverged}"
                    + (f" (and {others} more not finished normally)" if others else "")
                    + "".join(f"\n  - {t}/{m}/seed {s}: {st} at step {at}" for t, m, s, st, at in diverged),
                    f"- downstream stages skipped: {len(self.skips)}"
                    + "".join(f"\n  - {st} {t}/{m}/seed {s}: {why}" for st, t, m, s, why in self.skips),
                    f"- rows dropped or cut: {self.numbers['failures']['dropped']} (per reason in the report)",
                    f"- skipped by the probes or missing (items): {len(self.problems)}", ""]  # fmt: skip
        self.sections.append(sec)

    def runs(self) -> None:
        sec = Section("MLflow runs", "mlflow")
        sec.add(para("Each number above came from a DVC-tracked file written by the run below "
                     "(open them in `mlflow ui`)."))  # fmt: skip
        rows = sorted({(w, n, i) for w, n, i in self.run_ids if i})
        sec.add(Table(["stage", "run", "run id"], [list(r) for r in rows], left=3).html())
        self.sections.append(sec)


def _yaml(obj: dict) -> str:
    return esc(yaml.safe_dump(obj, sort_keys=False, default_flow_style=None).strip())


def build(inp: ReportInputs, out: Path) -> dict:
    """Write `out`/index.html, summary.md and plots/*.png; returns the numbers shown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
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

"""The one reader of a pipeline run's files, for the report and `isoprobe results`: the metrics JSON
of every stage, the fine-tuning step traces, the prepared data's meta.json, the embeddings'
info.json and dvc.lock, as typed results.

`RunFiles(inp)` covers what `ReportInputs` names (tasks, methods, seeds) under `inp.root`, with every
path from `isoprobe.core.layout`; each kind of file is read once, on first use. A missing file is
None (or counted missing: the report lists it), an unreadable one an IsoprobeError. Outputs marked
skipped (`isoprobe.core.skipped`: their fine-tuning run did not finish) are kept apart as `Skip`s,
never among the results.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from isoprobe.core import layout
from isoprobe.core.config import Params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json
from isoprobe.core.scores import MAIN
from isoprobe.core.skipped import is_skipped
from isoprobe.reporting.stats import finite


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


def read_record(path: Path) -> dict | None:
    """The JSON object in `path`; None when the file does not exist."""
    try:
        return read_json(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as err:
        raise IsoprobeError(f"cannot read {path}: {err}") from err


class Problem(NamedTuple):
    """Something missing or left out, listed in the report's last section."""

    where: str
    what: str
    count: object


class Skip(NamedTuple):
    """A stage output marked skipped: [stage, task, method, seed, reason]."""

    stage: str
    task: str
    method: str
    seed: int | None
    reason: str

    @classmethod
    def of(cls, record: dict, stage: str, task: str, method: str, seed: int | None) -> Skip:
        """The skip `record` says (its own stage name first), for an output of `stage`."""
        return cls(
            record.get("stage") or stage, task, method, seed, record.get("reason") or "skipped"
        )


class DroppedRows(NamedTuple):
    """Rows of a task dropped when preparing it, or cut when embedding it."""

    task: str
    reason: str
    rows: int


@dataclass(frozen=True)
class TaskMeta:
    """data/prepared/<task>/meta.json ({} when absent: the report still builds)."""

    task: str
    meta: dict

    @property
    def metric(self) -> str:
        """The score compared across methods: the task's main score (the Pearson/Spearman mean for
        the correlation metric); "score" when the meta is absent."""
        metric = self.meta.get("metric", "score")
        return MAIN.get(metric, metric)

    def setup_row(self) -> list:
        """task, source, kind, metric, labels (count, or the label type), rows per split."""
        m, labels = self.meta, self.meta.get("label_names") or []
        counts = m.get("counts", {})
        return [self.task, m.get("source", ""), m.get("kind", ""), m.get("metric", ""),
                len(labels) if labels else m.get("label_type", ""),
                *(counts.get(s, {}).get("rows") for s in layout.SPLITS)]  # fmt: skip

    @property
    def source_files(self) -> list[dict]:
        """The files the task was prepared from: [{path, sha256}]."""
        return self.meta.get("source_files", [])

    @property
    def dropped(self) -> list[DroppedRows]:
        """Rows dropped per reason (reasons with no row left out)."""
        return [
            DroppedRows(self.task, r, n) for r, n in (self.meta.get("dropped") or {}).items() if n
        ]


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning run of the grid: its metrics (None: missing) and its per-step trace."""

    task: str
    method: str
    seed: int
    record: dict | None
    trace: Path  # plots/finetune/<task>/<method>/<seed>.csv, absent before the run

    @property
    def status(self) -> str | None:
        return None if self.record is None else self.record.get("status")

    @property
    def finished(self) -> bool:
        """Whether the run finished normally (status ok)."""
        return self.status == "ok"

    @property
    def score(self) -> float | None:
        """The finite test score compared across methods, for a finished run."""
        if not self.finished:
            return None
        metric = self.record.get("metric")
        v = (self.record.get("test") or {}).get(MAIN.get(metric, metric))
        return float(v) if finite(v) else None

    @property
    def mlflow_run_id(self) -> str | None:
        return (self.record or {}).get("mlflow_run_id")

    @property
    def device(self) -> str | None:
        """Where it ran: "<device> x<processes> (<threads> threads)"; None when missing."""
        m = self.record
        if not m:
            return None
        return f"{m.get('device')} x{m.get('processes', 1)} ({m.get('threads')} threads)"

    def grad_cls(self) -> list[float]:
        """||d loss / d [CLS]|| of every step in the trace (finite values); [] for a run that did
        not finish normally or left no trace."""
        if (self.record or {}).get("status", "ok") != "ok" or not self.trace.is_file():
            return []
        with self.trace.open(encoding="utf-8") as f:
            values = [float(r["grad_cls"]) for r in csv.DictReader(f) if r.get("grad_cls")]
        return [x for x in values if np.isfinite(x)]


@dataclass(frozen=True)
class IsotropyMetrics:
    """metrics/isotropy/<task>/<encoder>.json: the headline (last) layer's metrics at the top
    level, every layer in `layers`, and for a fine-tuned encoder the `head_input` vectors'."""

    task: str
    encoder: str  # "pretrained" or "<method>/<seed>"
    record: dict

    def get(self, key: str) -> object:
        return self.record.get(key)

    @property
    def layers(self) -> list[dict]:
        return self.record.get("layers") or []

    @property
    def head_input(self) -> dict:
        return self.record.get("head_input") or {}

    @property
    def mlflow_run_id(self) -> str | None:
        return self.record.get("mlflow_run_id")


@dataclass(frozen=True)
class IsotropyGroup:
    """The fine-tuned encoders of one task x method: those measured, and those skipped."""

    task: str
    method: str
    runs: list[IsotropyMetrics] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


DIRECTPROBE_PROBLEMS = (
    ("conflicting_rows", "DirectProbe: rows left out (identical vectors, different labels)"),
    ("undecided_pairs", "DirectProbe: cluster pairs left undecided (refused merges)"),
)


@dataclass(frozen=True)
class ProbeRun:
    """One probe metrics file of an encoder that was probed (not skipped)."""

    task: str
    group: str
    record: dict

    @property
    def encoder(self) -> str:
        return self.record.get("encoder", self.group)

    @property
    def layers(self) -> list[dict]:
        return self.record["layers"]

    @property
    def mlflow_run_id(self) -> str | None:
        return self.record.get("mlflow_run_id")

    def problems(self) -> list[Problem]:
        """Words cut by max length, and per layer and split the rows DirectProbe left out and
        the cluster pairs it left undecided."""
        where = f"probe {self.task}/{self.encoder}"
        cut = self.record.get("words_cut_by_max_length") or 0
        cut = sum(cut.values()) if isinstance(cut, dict) else cut
        out = [Problem(where, "words cut by max length (not probed)", cut)] if cut else []
        for lay in self.record.get("layers", []):
            dp = lay.get("directprobe") or {}
            for split in ("train", "test"):
                part = dp.get(split) or {}
                out += [Problem(f"{where} layer {lay['layer']} {split}", what, part[key])
                        for key, what in DIRECTPROBE_PROBLEMS if part.get(key)]  # fmt: skip
        return out


@dataclass(frozen=True)
class ProbeGroup:
    """The encoders of one group probed on a task: "pre-trained", a method (its seeds), or for a
    token task "<finetune task>/<method>"."""

    task: str
    name: str
    runs: list[ProbeRun]
    missing: int  # metrics files not found
    skips: list[Skip]


class RunFiles:
    """Every file of the run `inp` describes, read once on first use (see the module doc)."""

    def __init__(self, inp: ReportInputs):
        self.inp, self.root = inp, inp.root
        self._meta: dict[str, TaskMeta] = {}

    def meta(self, task: str) -> TaskMeta:
        """data/prepared/<task>/meta.json."""
        if task not in self._meta:
            path = self.root / layout.prepared_dir(task) / "meta.json"
            self._meta[task] = TaskMeta(task, read_record(path) or {})
        return self._meta[task]

    @cached_property
    def finetune(self) -> dict[tuple[str, str], list[FinetuneRun]]:
        """(task, method) -> its runs, one per seed."""
        inp = self.inp
        return {(t, m): [self._finetune_run(t, m, s) for s in inp.seeds]
                for t in inp.finetune_tasks for m in inp.methods}  # fmt: skip

    def _finetune_run(self, task: str, method: str, seed: int) -> FinetuneRun:
        record = read_record(self.root / layout.finetune_metrics_file(task, method, seed))
        trace = self.root / layout.finetune_plot_file(task, method, seed)
        return FinetuneRun(task, method, seed, record, trace)

    def finetune_runs(self) -> list[FinetuneRun]:
        """Every run of the grid: task, then method, then seed."""
        return [r for runs in self.finetune.values() for r in runs]

    @cached_property
    def pretrained(self) -> dict[str, IsotropyMetrics | None]:
        """task -> the pre-trained encoder's isotropy (pipeline and fine-tuning tasks)."""
        out = {}
        for task in dict.fromkeys([*self.inp.tasks, *self.inp.finetune_tasks]):
            record = read_record(self.root / layout.isotropy_metrics_file(task))
            out[task] = None if record is None else IsotropyMetrics(task, "pretrained", record)
        return out

    @cached_property
    def finetuned_isotropy(self) -> dict[tuple[str, str], IsotropyGroup]:
        """(task, method) -> the isotropy of its fine-tuned encoders (seeds with a metrics file)."""
        inp, out = self.inp, {}
        for task in inp.finetune_tasks:
            for method in inp.methods:
                group = out[task, method] = IsotropyGroup(task, method)
                for s in inp.seeds:
                    enc = layout.finetuned_encoder(method, s)
                    record = read_record(self.root / layout.isotropy_metrics_file(task, enc))
                    if is_skipped(record):
                        group.skips.append(Skip.of(record, "embed_post", task, method, s))
                    elif record and record.get("layers"):
                        group.runs.append(IsotropyMetrics(task, f"{method}/{s}", record))
        return out

    @cached_property
    def probe_groups(self) -> dict[str, list[ProbeGroup]]:
        """Probed task -> its encoder groups: pre-trained first, then each method."""
        inp = self.inp
        return {task: [self._probe_group(task, name, files)
                       for name, files in self._probe_files(task).items()]
                for task in inp.probe_tasks + inp.token_tasks}  # fmt: skip

    def _probe_files(self, task: str) -> dict[str, list[tuple]]:
        """Group -> (metrics file, stage, task as listed, method, seed) of each of its encoders."""
        inp, metrics = self.inp, layout.probe_metrics_file
        groups = {"pre-trained": [(metrics(task), "probe", task, "pretrained", None)]}
        if task in inp.token_tasks:
            for ft in inp.finetune_tasks:
                where = f"{task} (encoder fine-tuned on {ft})"
                groups |= {f"{ft}/{m}": [(metrics(task, layout.probed_encoder(task, m, s, ft)),
                                          "probe_cross", where, m, s) for s in inp.seeds]
                           for m in inp.methods}  # fmt: skip
        else:
            groups |= {m: [(metrics(task, layout.probed_encoder(task, m, s)), "probe_post", task, m, s)
                           for s in inp.seeds] for m in inp.methods}  # fmt: skip
        return groups

    def _probe_group(self, task: str, name: str, files: list[tuple]) -> ProbeGroup:
        runs, skips, missing = [], [], 0
        for path, *where in files:
            record = read_record(self.root / path)
            if record is None:
                missing += 1
            elif is_skipped(record):
                skips.append(Skip.of(record, *where))
            else:
                runs.append(ProbeRun(task, name, record))
        return ProbeGroup(task, name, runs, missing, skips)

    @cached_property
    def skips(self) -> list[Skip]:
        """Every skipped output, once: embed_post's, then the probes'."""
        groups = [*self.finetuned_isotropy.values(), *sum(self.probe_groups.values(), [])]
        return list(dict.fromkeys(s for g in groups for s in g.skips))

    @cached_property
    def dropped(self) -> list[DroppedRows]:
        """Per pipeline task: rows dropped when preparing it, then rows cut when embedding it."""
        out = []
        for task in self.inp.tasks:
            out += self.meta(task).dropped
            path = self.root / layout.embeddings_dir(task) / "info.json"
            info = read_record(path) or {}
            for split, s in (info.get("splits") or {}).items():
                for key in ("truncated_rows", "words_cut_by_max_length"):
                    if s.get(key):
                        reason = f"{key} ({split}, max_length {info.get('max_length')})"
                        out.append(DroppedRows(task, reason, s[key]))
        return out

    @cached_property
    def lock_stages(self) -> dict | None:
        """dvc.lock's stages; None without a dvc.lock."""
        lock = self.root / "dvc.lock"
        if not lock.is_file():
            return None
        return (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})

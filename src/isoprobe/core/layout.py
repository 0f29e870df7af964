"""Where each stage reads and writes, relative to the repository root (all DVC outputs), and the
MLflow experiments runs are logged to. dvc.yaml spells the same paths out for DVC (a test checks
that the two agree); everything in isoprobe takes them from here."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "dev", "test")
REPORT_EXPERIMENT = "isoprobe/report"
# one run per task x method of each report: the seed aggregate (median, Δ to baseline, p, ...)
AGGREGATE_EXPERIMENT = "isoprobe/aggregates"


def experiment_name(task: str) -> str:
    """The MLflow experiment of every run about `task` (isotropy, fine-tuning, probing)."""
    return f"isoprobe/{task}"


def source_link(task: str) -> Path:
    """The task's source data as DVC sees it (a symlink; see isoprobe.data.link)."""
    return Path("data/sources") / task


def prepared_dir(task: str) -> Path:
    return Path("data/prepared") / task


def embeddings_dir(task: str, encoder: str = "pretrained") -> Path:
    """`encoder` is "pretrained", or "finetuned/<method>/<seed>" for a fine-tuned encoder."""
    return Path("data/embeddings") / encoder / task


def isotropy_metrics_file(task: str, encoder: str = "pretrained") -> Path:
    """metrics/isotropy/<task>/pretrained.json, or .../<method>/<seed>.json for a fine-tuned encoder."""
    return Path("metrics/isotropy") / task / f"{encoder.removeprefix('finetuned/')}.json"


def isotropy_arrays_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("data/isotropy") / task / f"{encoder.replace('/', '_')}.safetensors"


def isotropy_plots_dir(task: str, encoder: str = "pretrained") -> Path:
    return Path("plots/isotropy") / task / encoder.replace("/", "_")


def isotropy_plot_csv(task: str, encoder: str, kind: str) -> Path:
    """plots/isotropy/<task>/<encoder>_<kind>.csv beside the plots folder (`by_layer`: every metric
    by layer; `std_sorted`: the last layer's sorted per-dimension std)."""
    folder = isotropy_plots_dir(task, encoder)
    return folder.with_name(f"{folder.name}_{kind}.csv")


def model_dir(task: str, method: str, seed: int) -> Path:
    return Path("models") / task / method / str(seed)


def finetune_metrics_file(task: str, method: str, seed: int) -> Path:
    return Path("metrics/finetune") / task / method / f"{seed}.json"


def finetune_plot_file(task: str, method: str, seed: int) -> Path:
    return Path("plots/finetune") / task / method / f"{seed}.csv"


def checkpoint_dir(task: str, method: str, seed: int) -> Path:
    """A fine-tuning run's resume state (a persistent, uncached DVC out)."""
    return Path("checkpoints") / task / method / str(seed)


def finetuned_encoder(method: str, seed: int) -> str:
    """The `encoder` label of a fine-tuned model, as used by embeddings_dir and the isotropy paths."""
    return f"finetuned/{method}/{seed}"


def probed_encoder(
    task: str, method: str | None = None, seed: int | None = None, finetune_task: str | None = None
) -> str:
    """Name of an encoder probed on `task`: `pretrained`, `<method>/<seed>` (fine-tuned on `task`
    itself) or `<finetune_task>/<method>/<seed>` (fine-tuned on another task)."""
    if method is None:
        return "pretrained"
    if finetune_task is None or finetune_task == task:
        return f"{method}/{seed}"
    return f"{finetune_task}/{method}/{seed}"


def probe_metrics_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("metrics/probe") / task / f"{encoder}.json"


def probe_arrays_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("data/probe") / task / f"{encoder}.safetensors"


def probe_plot_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("plots/probe") / task / f"{encoder.replace('/', '_')}_by_layer.csv"


def probe_summary_dir() -> Path:
    return Path("plots/probe_summary")


def report_dir() -> Path:
    """report/: index.html, summary.md and plots/ (the report stage's outputs)."""
    return Path("report")


def report_plots_dir(report: Path | None = None) -> Path:
    """<report>/plots/ (DVC plots); `report` is report_dir() unless the report is built elsewhere
    first."""
    return (report_dir() if report is None else report) / "plots"


def report_plot_file(kind: str, task: str, report: Path | None = None) -> Path:
    """<report>/plots/<kind>_<task>.png (kind: scores, grad_cls, isoscore)."""
    return report_plots_dir(report) / f"{kind}_{task}.png"

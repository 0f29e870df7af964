"""The finetune stage's work: fine-tune the encoder with one [CLS] treatment and seed (`loop`), then,
on the main process, write the model folder (`classifier`), the per-step CSV and the metrics JSON
(`outputs`) and log the MLflow run; a resumed checkpoint continues its own MLflow run.

Nothing heavy (torch, transformers, MLflow) is imported before the instance is validated."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from isoprobe.core import layout
from isoprobe.core.stage import check_instance, offline_if_local

if TYPE_CHECKING:
    from isoprobe.core.config import Params, TrackingConfig
    from isoprobe.core.tracking import Tracker
    from isoprobe.finetune.checkpoint import Checkpointer
    from isoprobe.finetune.classifier import EncoderClassifier
    from isoprobe.finetune.loop import FinetuneResult

# the per-step series logged to MLflow; the schedule's rate as `learning_rate` (`lr` is the param)
SERIES = ("loss", "learning_rate", "grad_cls", "grad_head", "grad_total")


@dataclass
class Job:
    """One fine-tuning run: its instance and params, the prepared data and the classifier."""

    params: Params
    task: str
    method: str
    seed: int
    meta: dict
    splits: dict[str, list[dict]]
    accelerator: Any
    model: EncoderClassifier
    tokenizer: Any
    info: dict  # of the encoder (load_encoder)
    options: dict  # of the treatment
    flat: dict  # the run's flat params (MLflow, checkpoint identity)

    @property
    def run_name(self) -> str:
        return f"{self.method}-s{self.seed}"

    @property
    def main(self) -> bool:
        """Under `accelerate launch` only the main process logs and writes."""
        return self.accelerator.is_main_process

    @property
    def num_outputs(self) -> int:
        return 1 if self.meta["label_type"] == "regression" else self.meta["num_labels"]


def run_finetune(
    params: Params, task: str, method: str, seed: int, progress: bool = True
) -> FinetuneResult:
    """Stage `finetune@<task>-<method>-<seed>`; returns the run's result. An instance outside the
    params' grid fails (IsoprobeError) before anything is loaded; a diverged run is recorded and,
    with `finetune.fail_fast`, then fails."""
    check_instance(SimpleNamespace(task=task, method=method, seed=seed), params.finetune)
    offline_if_local(params.model.name)
    job = load_job(params, task, method, seed)
    result = train_and_record(job, make_checkpointer(job), progress)
    job.accelerator.wait_for_everyone()
    conclude(job, result)
    return result


def load_job(params: Params, task: str, method: str, seed: int) -> Job:
    """Prepared splits, the accelerator and the classifier, its head initialised under the seed."""
    from isoprobe.core.models import check_lengths, load_encoder, resolve_model
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.finetune.classifier import EncoderClassifier, check_pooling
    from isoprobe.finetune.heads import ClassifierHead
    from isoprobe.finetune.loop import make_accelerator, seed_everything
    from isoprobe.finetune.outputs import flat_params

    cfg = params.finetune.train
    meta = load_meta(layout.prepared_dir(task))
    splits = {s: load_split(layout.prepared_dir(task), s) for s in layout.SPLITS}
    accelerator = make_accelerator(cfg)
    seed_everything(seed)  # the head's initialisation is part of the seeded run
    encoder, tokenizer, info = load_encoder(resolve_model(params.model.name, params.model.revision))
    lengths = {"finetune.train.max_length": cfg.max_length}
    check_lengths(params.model.name, encoder.config, tokenizer, lengths)
    check_pooling(cfg.pooling, info)
    options = params.finetune.heads.options(method)
    outputs = 1 if meta["label_type"] == "regression" else meta["num_labels"]
    head = ClassifierHead(method, info["hidden_size"], outputs, cfg.dropout, options)
    model = EncoderClassifier(encoder, head, cfg.pooling)
    flat = flat_params(params, task, method, seed)
    return Job(params, task, method, seed, meta, splits, accelerator, model, tokenizer, info,
               options, flat)  # fmt: skip


def make_checkpointer(job: Job) -> Checkpointer:
    """The run's checkpoints, identified by its flat params, model revision, data and processes."""
    from isoprobe.finetune.checkpoint import Checkpointer

    ft = job.params.finetune
    identity = {
        **job.flat, "model.revision": job.params.model.revision,
        "data.content_sha256": job.meta.get("content_sha256"),
        "processes": job.accelerator.num_processes,
    }  # fmt: skip
    return Checkpointer(
        layout.checkpoint_dir(job.task, job.method, job.seed), identity,
        every_steps=ft.checkpoint.every_steps, enabled=ft.checkpoint.enabled, main=job.main,
    )  # fmt: skip


def existing_run(tracking: TrackingConfig, task: str, run_id: str | None) -> str | None:
    """The checkpoint's MLflow run id if the store still holds that run, else None (a new run)."""
    if run_id is None:
        return None
    from isoprobe.core.tracking import open_store

    store = open_store(tracking, layout.experiment_name(task))
    if store is None:
        return None
    try:
        store[0].get_run(run_id)
    except Exception:
        print(
            f"isoprobe: MLflow run {run_id} of the checkpoint is gone: a new run", file=sys.stderr
        )
        return None
    return run_id


def open_run(job: Job, run_id: str | None):
    """The MLflow run (a resumed one with `run_id`) on the main process, a no-op Tracker elsewhere."""
    from contextlib import nullcontext

    from isoprobe.core.tracking import Tracker, tracked_run

    if not job.main:
        return nullcontext(Tracker())
    tags = {
        "task": job.task, "method": job.method, "seed": job.seed, "stage": "finetune",
        "model": job.params.model.name, "processes": job.accelerator.num_processes,
    }  # fmt: skip
    return tracked_run(
        job.params.tracking,
        layout.experiment_name(job.task),
        job.run_name,
        tags=tags,
        run_id=run_id,
    )


def train_and_record(job: Job, checkpoint: Checkpointer, progress: bool) -> FinetuneResult:
    """Fine-tune in the MLflow run (dev scores logged by epoch); the main process then writes every
    output, ends the checkpoints with their marker and the run (FAILED when diverged)."""
    from isoprobe.finetune.loop import finetune

    resume = checkpoint.resumable()
    resumed_id = resume and resume.get("mlflow_run_id")
    run_id = existing_run(job.params.tracking, job.task, resumed_id) if job.main else None
    with open_run(job, run_id) as run:
        checkpoint.run_id = run.run_id
        if run_id is None:
            run.log_params(job.flat)
        result = finetune(
            job.model, job.tokenizer, job.splits, job.meta, job.params.finetune.train, job.seed,
            accelerator=job.accelerator, progress=progress, checkpoint=checkpoint,
            on_epoch=lambda ep: run.log_metrics(
                {f"epoch_{k}": v for k, v in ep.items() if k.startswith("dev_")}, step=ep["step"]),
        )  # fmt: skip
        if job.main:
            diverged = result.status != "ok"
            write_outputs(job, result, run)
            checkpoint.finish("diverged" if diverged else "complete", len(result.steps))
            run.end("FAILED" if diverged else "FINISHED")  # also a resumed run
    return result


def write_outputs(job: Job, result: FinetuneResult, run: Tracker) -> None:
    """Model folder, steps CSV, the MLflow series, scores, tags, the metrics JSON and artifacts."""
    from isoprobe.core.io import json_safe, write_json
    from isoprobe.finetune.outputs import write_steps_csv

    where = (job.task, job.method, job.seed)
    write_model(job, result)
    write_steps_csv(layout.finetune_plot_file(*where), result.steps)
    report = metrics_report(job, result, run.run_id)
    series = [json_safe({**r, "learning_rate": r["lr"]}) for r in result.steps]
    run.log_series(series, keys=list(SERIES))
    final = {f"dev_{k}": v for k, v in result.dev.items()}
    run.log_metrics(final | {f"test_{k}": v for k, v in result.test.items()})
    run.log_metrics({f"{g}_{s}": v for g, d in report["grad"].items() for s, v in d.items()})
    run.set_tags({"status": result.status, "diverged_at_step": result.diverged_at})
    metrics_path = layout.finetune_metrics_file(*where)
    write_json(metrics_path, json_safe(report))
    run.log_artifact(metrics_path, "metrics")
    run.log_artifact(layout.finetune_plot_file(*where), "plots")
    if job.params.finetune.train.log_weights and result.status == "ok":
        run.log_artifacts(layout.model_dir(*where), "model")


def write_model(job: Job, result: FinetuneResult) -> None:
    """models/<task>/<method>/<seed>/: the classifier and head.json, or for a diverged run (weights
    not finite) only status.json, the evidence."""
    from isoprobe.core.io import atomic_dir, write_json
    from isoprobe.finetune.classifier import save_classifier

    with atomic_dir(layout.model_dir(job.task, job.method, job.seed)) as tmp:
        if result.status != "ok":
            write_json(
                tmp / "status.json",
                {"status": result.status, "diverged_at_step": result.diverged_at,
                 "task": job.task, "method": job.method, "seed": job.seed},
            )  # fmt: skip
        else:
            core = job.accelerator.unwrap_model(job.model)
            save_classifier(core, job.tokenizer, tmp, head_config(job, result))


def head_config(job: Job, result: FinetuneResult) -> dict:
    """head.json of the model folder (save_classifier adds the pooling)."""
    cfg, meta = job.params.finetune.train, job.meta
    return {
        "method": job.method, "options": job.options, "hidden_size": job.info["hidden_size"],
        "num_outputs": job.num_outputs, "dropout": cfg.dropout,
        "label_type": meta["label_type"], "label_names": meta["label_names"],
        "task": job.task, "seed": job.seed, "base_model": job.params.model.name,
        "best_epoch": result.best_epoch,
    }  # fmt: skip


def metrics_report(job: Job, result: FinetuneResult, run_id: str | None) -> dict:
    """The metrics JSON (before json_safe): scores, best epoch, gradient summary, time, device."""
    import torch

    from isoprobe.finetune.loop import gradient_summary

    acc = job.accelerator
    return {
        "task": job.task, "method": job.method, "seed": job.seed, "status": result.status,
        "diverged_at_step": result.diverged_at, "metric": job.meta["metric"],
        "best_epoch": result.best_epoch, "dev": result.dev, "test": result.test,
        "dev_by_epoch": result.epochs, "grad": gradient_summary(result.steps),
        "steps": len(result.steps), "train_examples_seen": result.train_examples,
        "seconds": round(result.seconds, 2), "eval_seconds": round(result.eval_seconds, 2),
        "examples_per_second": round(result.examples_per_second, 1),
        "device": str(acc.device), "threads": torch.get_num_threads(),
        "processes": acc.num_processes, "mlflow_run_id": run_id,
    }  # fmt: skip


def conclude(job: Job, result: FinetuneResult) -> None:
    """A diverged run fails with finetune.fail_fast, else warns; the main process says the result."""
    from isoprobe.core.errors import IsoprobeError

    where = f"finetune {job.task}/{job.run_name} diverged at step {result.diverged_at}"
    diverged = result.status != "ok"
    if diverged and job.params.finetune.fail_fast:
        raise IsoprobeError(
            f"{where} (non-finite loss or gradient norm) and finetune.fail_fast is true: stopping "
            "(its metrics, steps CSV and MLflow run are written as evidence)"
        )
    if not job.main:
        return
    if diverged:
        print(
            f"isoprobe: warning: {where} (non-finite loss or gradient norm): recorded as "
            "status: diverged; the other runs go on (finetune.fail_fast: false)",
            file=sys.stderr,
        )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.test.items())
    print(
        f"finetune {job.task}/{job.run_name}: {result.status}, best epoch {result.best_epoch}, "
        f"test: {shown}"
    )

"""Stage `finetune@<task>-<method>-<seed>`: fine-tune the encoder with one [CLS] treatment and seed.

Writes models/<task>/<method>/<seed>/ (encoder and head in safetensors, config, tokenizer, head.json),
metrics/finetune/<task>/<method>/<seed>.json (dev/test scores, best epoch, gradient-norm summary),
plots/finetune/<task>/<method>/<seed>.csv (per-step loss and gradient norms), and one MLflow run
`<method>-s<seed>` in experiment isoprobe/<task>.

checkpoints/<task>/<method>/<seed>/ holds the checkpoints of an unfinished run (a rerun after a kill
resumes there, in the same MLflow run) and, once the stage is done, only a small state.json marker.

A run whose loss or gradient norm turns non-finite is recorded as `status: diverged` (metrics JSON,
CSV up to that step, models/... holding only status.json, MLflow run FAILED); the stage then exits 0
with a warning, or with `finetune.fail_fast: true` fails (exit 2) so `dvc repro` stops."""

import sys
from contextlib import nullcontext

from isoprobe.core.config import load_params
from isoprobe.core.stage import check_instance, instance_arguments, offline_if_local, run_stage


def existing_run(tracking, task: str, run_id: str | None) -> str | None:
    """The checkpoint's MLflow run id if the store still holds that run, else None (a new run)."""
    if run_id is None:
        return None
    from isoprobe.core.tracking import open_store

    store = open_store(tracking, f"isoprobe/{task}")
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


def main() -> None:
    args = instance_arguments(__doc__)
    params = load_params(args.params)
    ft = params.finetune
    check_instance(args, ft)
    offline_if_local(params.model.name)

    import torch

    from isoprobe.core.errors import IsoprobeError
    from isoprobe.core.io import atomic_dir, write_json
    from isoprobe.core.layout import (
        finetune_metrics_file,
        finetune_plot_file,
        model_dir,
        prepared_dir,
    )
    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.core.tracking import Tracker, tracked_run
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.finetune.checkpoint import Checkpointer, checkpoint_dir
    from isoprobe.finetune.classifier import EncoderClassifier, check_pooling, save_classifier
    from isoprobe.finetune.heads import ClassifierHead
    from isoprobe.finetune.loop import finetune, gradient_summary, make_accelerator, seed_everything
    from isoprobe.finetune.outputs import finite_json, flat_params, write_steps_csv

    cfg = ft.train
    meta = load_meta(prepared_dir(args.task))
    splits = {s: load_split(prepared_dir(args.task), s) for s in ("train", "dev", "test")}
    accelerator = make_accelerator(cfg)
    seed_everything(args.seed)  # the head's initialisation is part of the seeded run
    encoder, tokenizer, info = load_encoder(resolve_model(params.model.name, params.model.revision))
    check_pooling(cfg.pooling, info)
    regression = meta["label_type"] == "regression"
    options = ft.heads.options(args.method)
    head = ClassifierHead(
        args.method,
        info["hidden_size"],
        1 if regression else meta["num_labels"],
        cfg.dropout,
        options,
    )
    model = EncoderClassifier(encoder, head, cfg.pooling)
    run_name = f"{args.method}-s{args.seed}"
    main_process = accelerator.is_main_process  # under `accelerate launch`, only it logs and writes
    flat = flat_params(params, args.task, args.method, args.seed)
    checkpoint = Checkpointer(
        checkpoint_dir(args.task, args.method, args.seed),
        {
            **flat, "model.revision": params.model.revision,
            "data.content_sha256": meta.get("content_sha256"),
            "processes": accelerator.num_processes,
        },
        every_steps=ft.checkpoint.every_steps, enabled=ft.checkpoint.enabled, main=main_process,
    )  # fmt: skip
    resume = checkpoint.resumable()
    run_id = (
        existing_run(params.tracking, args.task, resume and resume.get("mlflow_run_id"))
        if main_process
        else None
    )
    tracking = tracked_run(
        params.tracking,
        f"isoprobe/{args.task}",
        run_name,
        tags={
            "task": args.task, "method": args.method, "seed": args.seed, "stage": "finetune",
            "model": params.model.name, "processes": accelerator.num_processes,
        },
        run_id=run_id,
    ) if main_process else nullcontext(Tracker())  # fmt: skip
    with tracking as run:
        checkpoint.run_id = run.run_id
        if run_id is None:
            run.log_params(flat)
        result = finetune(
            model, tokenizer, splits, meta, cfg, args.seed, accelerator=accelerator,
            progress=not args.no_progress, checkpoint=checkpoint, on_epoch=lambda ep: run.log_metrics(
                {f"epoch_{k}": v for k, v in ep.items() if k.startswith("dev_")}, step=ep["step"]),
        )  # fmt: skip
        diverged = result.status != "ok"
        if main_process:
            core = accelerator.unwrap_model(model)
            with atomic_dir(model_dir(args.task, args.method, args.seed)) as tmp:
                if diverged:  # the weights are not finite: only the evidence
                    write_json(
                        tmp / "status.json",
                        {"status": result.status, "diverged_at_step": result.diverged_at,
                         "task": args.task, "method": args.method, "seed": args.seed},
                    )  # fmt: skip
                else:
                    head_config = {
                        "method": args.method, "options": options, "hidden_size": info["hidden_size"],
                        "num_outputs": 1 if regression else meta["num_labels"], "dropout": cfg.dropout,
                        "label_type": meta["label_type"], "label_names": meta["label_names"],
                        "task": args.task, "seed": args.seed, "base_model": params.model.name,
                        "best_epoch": result.best_epoch,
                    }  # fmt: skip
                    save_classifier(core, tokenizer, tmp, head_config)
            write_steps_csv(finetune_plot_file(args.task, args.method, args.seed), result.steps)
            report = {
                "task": args.task,
                "method": args.method,
                "seed": args.seed,
                "status": result.status,
                "diverged_at_step": result.diverged_at,
                "metric": meta["metric"],
                "best_epoch": result.best_epoch,
                "dev": result.dev,
                "test": result.test,
                "dev_by_epoch": result.epochs,
                "grad": gradient_summary(result.steps),
                "steps": len(result.steps),
                "train_examples_seen": result.train_examples,
                "seconds": round(result.seconds, 2),
                "eval_seconds": round(result.eval_seconds, 2),
                "examples_per_second": round(result.examples_per_second, 1),
                "device": str(accelerator.device),
                "threads": torch.get_num_threads(),
                "processes": accelerator.num_processes,
                "mlflow_run_id": run.run_id,
            }
            # per-step series (finite points); the schedule's rate as `learning_rate` (`lr` is the
            # configured param)
            series = [finite_json({**r, "learning_rate": r["lr"]}) for r in result.steps]
            run.log_series(
                series, keys=["loss", "learning_rate", "grad_cls", "grad_head", "grad_total"]
            )
            final = {f"dev_{k}": v for k, v in result.dev.items()} | {
                f"test_{k}": v for k, v in result.test.items()
            }
            run.log_metrics(final)
            run.log_metrics(
                {f"{g}_{s}": v for g, d in report["grad"].items() for s, v in d.items()}
            )
            run.set_tags({"status": result.status, "diverged_at_step": result.diverged_at})
            metrics_path = finetune_metrics_file(args.task, args.method, args.seed)
            write_json(metrics_path, finite_json(report))
            run.log_artifact(metrics_path, "metrics")
            run.log_artifact(finetune_plot_file(args.task, args.method, args.seed), "plots")
            if cfg.log_weights and not diverged:
                run.log_artifacts(model_dir(args.task, args.method, args.seed), "model")
            checkpoint.finish("diverged" if diverged else "complete", len(result.steps))
            run.end("FAILED" if diverged else "FINISHED")  # also a resumed run
    accelerator.wait_for_everyone()
    where = f"finetune {args.task}/{run_name} diverged at step {result.diverged_at}"
    if diverged and ft.fail_fast:
        raise IsoprobeError(
            f"{where} (non-finite loss or gradient norm) and finetune.fail_fast is true: stopping "
            "(its metrics, steps CSV and MLflow run are written as evidence)"
        )
    if not main_process:
        return
    if diverged:
        print(
            f"isoprobe: warning: {where} (non-finite loss or gradient norm): recorded as "
            "status: diverged; the other runs go on (finetune.fail_fast: false)",
            file=sys.stderr,
        )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.test.items())
    print(
        f"finetune {args.task}/{run_name}: {result.status}, best epoch {result.best_epoch}, test: {shown}"
    )


if __name__ == "__main__":
    run_stage(main)

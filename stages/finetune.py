"""Stage `finetune@<task>-<method>-<seed>`: fine-tune the encoder with one [CLS] treatment and seed.

Writes models/<task>/<method>/<seed>/ (encoder and head in safetensors, config, tokenizer, head.json),
metrics/finetune/<task>/<method>/<seed>.json (dev/test scores, best epoch, gradient-norm summary),
plots/finetune/<task>/<method>/<seed>.csv (per-step loss and gradient norms), and one MLflow run
`<method>-s<seed>` in experiment isoprobe/<task>."""

from contextlib import nullcontext

from isoprobe.config import load_params
from isoprobe.stage import check_instance, instance_arguments, offline_if_local, run_stage


def main() -> None:
    args = instance_arguments(__doc__)
    params = load_params(args.params)
    ft = params.finetune
    check_instance(args, ft)
    offline_if_local(params.model.name)

    import torch
    from accelerate import Accelerator

    from isoprobe.classifier import EncoderClassifier, check_pooling, save_classifier
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.device import pick_device
    from isoprobe.finetune import finetune, gradient_summary, seed_everything
    from isoprobe.finetune_outputs import flat_params, write_steps_csv
    from isoprobe.heads import ClassifierHead
    from isoprobe.io import atomic_dir, write_json
    from isoprobe.models import load_encoder, resolve_model
    from isoprobe.paths import finetune_metrics_file, finetune_plot_file, model_dir, prepared_dir
    from isoprobe.tracking import Tracker, tracked_run

    cfg = ft.train
    meta = load_meta(prepared_dir(args.task))
    splits = {s: load_split(prepared_dir(args.task), s) for s in ("train", "dev", "test")}
    device = pick_device(cfg.device, cfg.num_threads, key="finetune.train.device")
    accelerator = Accelerator(
        cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no"
    )
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
    tracking = tracked_run(
        params.tracking,
        f"isoprobe/{args.task}",
        run_name,
        tags={
            "task": args.task, "method": args.method, "seed": args.seed, "stage": "finetune",
            "model": params.model.name, "processes": accelerator.num_processes,
        },
    ) if main_process else nullcontext(Tracker(None, None))  # fmt: skip
    with tracking as run:
        run.log_params(flat_params(params, args.task, args.method, args.seed))
        result = finetune(
            model, tokenizer, splits, meta, cfg, args.seed, accelerator=accelerator,
            progress=not args.no_progress, on_epoch=lambda ep: run.log_metrics(
                {f"epoch_{k}": v for k, v in ep.items() if k.startswith("dev_")}, step=ep["step"]),
        )  # fmt: skip
        if main_process:
            core = accelerator.unwrap_model(model)
            head_config = {
                "method": args.method, "options": options, "hidden_size": info["hidden_size"],
                "num_outputs": 1 if regression else meta["num_labels"], "dropout": cfg.dropout,
                "label_type": meta["label_type"], "label_names": meta["label_names"], "task": args.task,
                "seed": args.seed, "base_model": params.model.name, "best_epoch": result.best_epoch,
            }  # fmt: skip
            with atomic_dir(model_dir(args.task, args.method, args.seed)) as tmp:
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
                "examples_per_second": round(result.train_examples / max(result.seconds, 1e-9), 1),
                "device": str(accelerator.device),
                "threads": torch.get_num_threads(),
                "processes": accelerator.num_processes,
                "mlflow_run_id": run.run_id,
            }
            # per-step series; the schedule's rate as `learning_rate` (`lr` is the configured param)
            series = [{**r, "learning_rate": r["lr"]} for r in result.steps]
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
            run.set_tags({"status": result.status})
            metrics_path = finetune_metrics_file(args.task, args.method, args.seed)
            write_json(metrics_path, report)
            run.log_artifact(metrics_path, "metrics")
            run.log_artifact(finetune_plot_file(args.task, args.method, args.seed), "plots")
            if cfg.log_weights:
                run.log_artifacts(model_dir(args.task, args.method, args.seed), "model")
    accelerator.wait_for_everyone()
    if not main_process:
        return
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.test.items())
    print(
        f"finetune {args.task}/{run_name}: {result.status}, best epoch {result.best_epoch}, test: {shown}"
    )


if __name__ == "__main__":
    run_stage(main)

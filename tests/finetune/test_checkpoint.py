"""Fine-tuning checkpoints: a run killed after a checkpoint and resumed ends bit-identical (CPU, same
threads) to an uninterrupted one: steps, dev/test scores, final weights and head statistics; a
checkpoint of another run is ignored; a finished run leaves only its marker. Also the stage itself,
killed (SIGKILL) in a subprocess and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_finetune import META, synthetic

from conftest import REPO
from isoprobe.core.config import TrainConfig
from isoprobe.core.layout import checkpoint_dir
from isoprobe.core.models import load_encoder, resolve_model
from isoprobe.finetune.checkpoint import CHECKPOINT, MARKER, Checkpointer
from isoprobe.finetune.classifier import EncoderClassifier
from isoprobe.finetune.heads import ClassifierHead
from isoprobe.finetune.loop import finetune, seed_everything

SPLITS = {"train": synthetic(96, 1), "dev": synthetic(32, 2), "test": synthetic(32, 3)}
# 6 steps per epoch, dropout in the encoder (tiny_bert: 0.1) and in the head: RNG state matters
CFG = TrainConfig(
    lr=2e-3, batch_size=16, epochs=3, max_length=16, warmup_ratio=0.1, dropout=0.1, device="cpu"
)


class Killed(Exception):
    pass


def build(bert: Path, method: str, seed: int = 0) -> tuple[EncoderClassifier, object]:
    seed_everything(seed)
    encoder, tokenizer, info = load_encoder(resolve_model(str(bert)))
    head = ClassifierHead(method, info["hidden_size"], 2, CFG.dropout)
    return EncoderClassifier(encoder, head, "cls"), tokenizer


def run(bert: Path, method: str, ckpt: Checkpointer | None = None, kill_at: int | None = None):
    """One fine-tuning call; with `kill_at` it raises Killed after that step."""
    model, tokenizer = build(bert, method)

    def on_step(rec: dict) -> None:
        if rec["step"] == kill_at:
            raise Killed

    result = finetune(
        model,
        tokenizer,
        SPLITS,
        META,
        CFG,
        seed=0,
        progress=False,
        on_step=on_step,
        checkpoint=ckpt,
    )
    return result, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tiny_bert):
    torch.set_num_threads(1)
    return {m: run(tiny_bert, m) for m in ("isobn", "whiten")}


def assert_same(a, b) -> None:
    (ra, wa), (rb, wb) = a, b
    assert ra.status == rb.status == "ok"
    assert ra.steps == rb.steps  # loss, lr and gradient norms of every step, exactly
    assert ra.epochs == rb.epochs and ra.best_epoch == rb.best_epoch
    assert ra.dev == rb.dev and ra.test == rb.test and ra.train_examples == rb.train_examples
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize(
    "method, every, kill_at, resumed_at",
    [
        ("isobn", 4, 10, 8),  # mid-epoch (epoch 2, 2 of its 6 batches done)
        ("whiten", 0, 10, 6),  # end of epoch 1
        ("isobn", 0, 13, 12),  # end of epoch 2: the best-dev state so far comes back too
    ],
)
def test_resume_after_a_kill_is_bit_identical(
    tiny_bert, reference, tmp_path, capsys, method, every, kill_at, resumed_at
):
    torch.set_num_threads(1)
    folder = tmp_path / "ck"
    ckpt = Checkpointer(folder, {"run": method}, every_steps=every)
    with pytest.raises(Killed):
        run(tiny_bert, method, ckpt, kill_at=kill_at)
    state = json.loads((folder / CHECKPOINT).read_text())
    assert state["step"] == resumed_at and state["status"] == "running"
    model = load_file(str(folder / "model.safetensors"))
    assert int(model["head.norm.stats.steps"]) == resumed_at  # head buffers are in the checkpoint
    opt = load_file(str(folder / "optimizer.safetensors"))
    assert {"head.linear.weight.exp_avg", "head.linear.weight.exp_avg_sq"} <= set(opt)
    assert load_file(str(folder / "rng.safetensors"))["torch_cpu"].dtype == torch.uint8
    assert not [p for p in folder.iterdir() if p.suffix not in (".json", ".safetensors")]
    capsys.readouterr()
    resumed = run(tiny_bert, method, Checkpointer(folder, {"run": method}, every_steps=every))
    assert f"from the checkpoint at step {resumed_at}" in capsys.readouterr().err
    assert_same(resumed, reference[method])


def test_checkpoint_of_another_run_is_ignored_and_finish_leaves_a_marker(
    tiny_bert, reference, tmp_path, capsys
):
    torch.set_num_threads(1)
    folder = tmp_path / "ck"
    with pytest.raises(Killed):
        run(tiny_bert, "isobn", Checkpointer(folder, {"lr": 1}, every_steps=4), kill_at=5)
    capsys.readouterr()
    other = Checkpointer(folder, {"lr": 2}, every_steps=4)
    fresh = run(tiny_bert, "isobn", other)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("isoprobe:")]
    assert len(lines) == 1 and "of another run" in lines[0]  # one line, no resume
    assert_same(fresh, reference["isobn"])
    other.finish("complete", fresh[0].steps[-1]["step"])
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    marker = json.loads((folder / MARKER).read_text())
    assert marker == {"status": "complete", "fingerprint": other.fingerprint, "step": 18}
    again = Checkpointer(folder, {"lr": 2})
    assert again.resumable() is None  # a finished run is not resumed: a rerun trains from scratch
    assert "isoprobe:" not in capsys.readouterr().err


def test_disabled_checkpoints_write_nothing_but_the_marker(tiny_bert, tmp_path):
    folder = tmp_path / "ck"
    ckpt = Checkpointer(folder, {}, every_steps=2, enabled=False)
    with pytest.raises(Killed):
        run(tiny_bert, "baseline", ckpt, kill_at=3)
    assert not folder.exists()
    ckpt.finish("complete", 3)
    assert [p.name for p in folder.iterdir()] == [MARKER]


# ------------------------------------------------------------------ two processes (DDP, gloo)


def _ddp_worker(rank: int, world: int, port: int, bert: str, outdir: str) -> None:
    """Uninterrupted, killed at step 5 (checkpoint at step 4, written by rank 0 only) and resumed
    runs in every process; rank 0 writes steps, scores and weights of the first and last."""
    import torch.distributed as dist
    from test_ddp import _env

    _env(rank, world, port)
    out = Path(outdir)
    results = {"whole": run(Path(bert), "isobn")}
    ckpt = Checkpointer(out / "ck", {"world": world}, every_steps=2, main=rank == 0)
    with pytest.raises(Killed):
        run(Path(bert), "isobn", ckpt, kill_at=5)
    again = Checkpointer(out / "ck", {"world": world}, every_steps=2, main=rank == 0)
    results["resumed"] = run(Path(bert), "isobn", again)
    if rank == 0:
        for name, (r, w) in results.items():
            save_file({k: v.contiguous() for k, v in w.items()}, str(out / f"{name}.safetensors"))
            summary = {"steps": r.steps, "epochs": r.epochs, "dev": r.dev, "test": r.test}
            (out / f"{name}.json").write_text(json.dumps(summary))
    dist.destroy_process_group()


def test_two_process_resume_equals_the_uninterrupted_two_process_run(tiny_bert, tmp_path):
    """Every process restores its own dropout RNG state (gathered into the checkpoint)."""
    import torch.multiprocessing as mp

    from conftest import free_port

    mp.spawn(_ddp_worker, args=(2, free_port(), str(tiny_bert), str(tmp_path)), nprocs=2)
    whole, resumed = (
        json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "resumed")
    )
    assert whole == resumed and len(whole["steps"]) == 18
    wa, wb = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("whole", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_file(str(tmp_path / "ck/rng.safetensors"))["torch_cpu"].shape[0] == 2


# ------------------------------------------------------------------ the stage, killed and rerun


def make_project(base: Path, bert: Path, **finetune: dict) -> Path:
    """A small project: params.yaml (tiny_bert as the model, sqlite MLflow store in the project) and
    a prepared task `tweets` of synthetic rows; git-initialised with the repo's checkpoints/.gitignore."""
    import hashlib

    from isoprobe.core.io import write_json, write_jsonl

    base.mkdir(parents=True, exist_ok=True)
    (base / ".dvc").mkdir(exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] = {"name": str(bert), "revision": None}
    params["pipeline"]["tasks"] = ["tweets"]
    params["tracking"] = {"enabled": True, "uri": f"sqlite:///{base / 'mlflow.db'}"}
    ft = params["finetune"]
    ft.update(tasks=["tweets"], methods=["isobn"], seeds=[0])
    ft["train"].update(
        lr=2e-3, batch_size=16, epochs=2, max_length=16, dropout=0.1, device="cpu", num_threads=1
    )
    ft["checkpoint"] = {"enabled": True, "every_steps": 2}
    for k, v in finetune.items():
        (ft[k].update(v) if isinstance(v, dict) else ft.__setitem__(k, v))
    params["probe"]["tasks"] = []
    params["probe"]["token_tasks"] = []
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepared = base / "data/prepared/tweets"
    h = hashlib.sha256()
    for split, n in (("train", 96), ("dev", 32), ("test", 32)):
        write_jsonl(prepared / f"{split}.jsonl", synthetic(n, len(split)))
        h.update((prepared / f"{split}.jsonl").read_bytes())
    meta = {**META, "task": "tweets", "kind": "sentence", "label_names": ["bad", "good"]}
    write_json(prepared / "meta.json", {**meta, "content_sha256": h.hexdigest()})
    (base / "checkpoints").mkdir()
    (base / "checkpoints/.gitignore").write_text((REPO / "checkpoints/.gitignore").read_text())
    subprocess.run(["git", "init", "-q"], cwd=base, check=True)
    return base


def stage(project: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, str(REPO / "stages/finetune.py"), "tweets", "isobn", "0", *args]
    return subprocess.Popen(
        [*cmd, "--no-progress"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed whole
    )


def finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


TIMING = ("seconds", "eval_seconds", "examples_per_second", "mlflow_run_id")


def metrics(project: Path) -> dict:
    m = json.loads((project / "metrics/finetune/tweets/isobn/0.json").read_text())
    return {k: v for k, v in m.items() if k not in TIMING}


def test_stage_killed_and_rerun_ends_like_an_uninterrupted_run(tiny_bert, tmp_path):
    whole = make_project(tmp_path / "whole", tiny_bert)
    code, out, err = finish(stage(whole))
    assert code == 0, err
    killed = make_project(tmp_path / "killed", tiny_bert)
    folder = killed / checkpoint_dir("tweets", "isobn", 0)
    proc = stage(killed)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((folder / CHECKPOINT).read_text())["step"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the stage ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    step = json.loads((folder / CHECKPOINT).read_text())["step"]
    assert not (killed / "metrics/finetune/tweets/isobn/0.json").exists()
    assert git_status(killed, "checkpoints") == ["?? checkpoints/.gitignore"]  # heavy files ignored
    code, out, err = finish(stage(killed))
    assert code == 0, err
    assert f"from the checkpoint at step {step}" in err
    assert metrics(killed) == metrics(whole)
    assert (killed / "plots/finetune/tweets/isobn/0.csv").read_text() == (
        whole / "plots/finetune/tweets/isobn/0.csv"
    ).read_text()
    a = load_file(str(killed / "models/tweets/isobn/0/head.safetensors"))
    b = load_file(str(whole / "models/tweets/isobn/0/head.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the persist out: only the marker; git ignores nothing else there (no heavy files left)
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    assert json.loads((folder / MARKER).read_text())["status"] == "complete"
    assert git_status(killed, "checkpoints") == [
        "?? checkpoints/.gitignore",
        "?? checkpoints/tweets/isobn/0/state.json",
    ]
    # one MLflow run, resumed, FINISHED with the whole per-step history
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("isoprobe/tweets").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert (
        json.loads((killed / "metrics/finetune/tweets/isobn/0.json").read_text())["mlflow_run_id"]
        == run_id
    )
    history = client.get_metric_history(run_id, "loss")
    assert sorted(p.step for p in history) == list(range(1, metrics(whole)["steps"] + 1))
    assert np.isfinite([p.value for p in history]).all()


def git_status(project: Path, *paths: str) -> list[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", *paths],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(filter(None, out.split("\n")))


def test_heavy_checkpoint_files_are_git_ignored(tmp_path):
    project = tmp_path / "p"
    folder = project / "checkpoints/t/m/0"
    folder.mkdir(parents=True)
    (project / "checkpoints/.gitignore").write_text((REPO / "checkpoints/.gitignore").read_text())
    for name in ("model.safetensors", "best.safetensors", CHECKPOINT, MARKER):
        (folder / name).write_text("x")
    (project / "checkpoints/t/m/.0.tmp-abc").mkdir()
    (project / "checkpoints/t/m/.0.tmp-abc/model.safetensors").write_text("x")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert git_status(project) == [
        "?? checkpoints/.gitignore",
        f"?? checkpoints/t/m/0/{MARKER}",
    ]

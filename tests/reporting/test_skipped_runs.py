"""A diverged fine-tuning run downstream. embed_post, probe_post and probe_cross write "skipped"
outputs (exit 0, one warning, the encoder and data never read, no MLflow run) that `dvc repro`
accepts with the project's own dvc.yaml entries; the probe summary and the report leave the run out
of every number and list it."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from e2e_repo import DVC, clean_env, sh, small_params, write_params
from safetensors import safe_open
from test_report import Tree, iso_layers, png, probe_layers, write

from conftest import REPO
from isoprobe.probing.outputs import CSV_COLUMNS

REASON = "fine-tuning diverged at step 17"


def runs_in(db: Path) -> int:
    """MLflow runs in a sqlite store (0 when the file does not exist)."""
    if not db.exists():
        return 0
    import sqlite3

    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return con.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0


def params() -> dict:
    """Full params (DVC checks every params key of dvc.yaml): one diverged instance tweets/isobn/1
    in the grid; probe_cross probes pos through it. Tracking on: a run would create mlflow.db."""
    p = small_params()
    p["pipeline"]["tasks"] = ["tweets", "pos"]
    p["finetune"].update(tasks=["tweets"], methods=["isobn"], seeds=[1])
    p["probe"].update(tasks=["tweets"], token_tasks=["pos"])
    p["tracking"] = {"enabled": True, "uri": None, "required": True}
    return p


def diverged_project(root: Path) -> Path:
    """What the finetune stage leaves for a diverged run (no prepared data, no embeddings)."""
    root.mkdir(parents=True, exist_ok=True)
    write_params(root, params())
    ids = {"task": "tweets", "method": "isobn", "seed": 1}
    write(root / "models/tweets/isobn/1/status.json", {"status": "diverged", "diverged_at_step": 17, **ids})  # fmt: skip
    write(root / "metrics/finetune/tweets/isobn/1.json", {
        **ids, "status": "diverged", "diverged_at_step": 17, "best_epoch": None, "metric": "accuracy",
        "dev": {}, "test": {}, "mlflow_run_id": "ft-run",
    })  # fmt: skip
    return root


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def stage(root: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / f"stages/{name}.py"), *args, "--no-progress"],
        cwd=root, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("isoprobe: warning:")]


def check_probe_skip(root: Path, task: str, encoder: str, stage_name: str) -> None:
    m = json.loads((root / f"metrics/probe/{task}/{encoder}.json").read_text())
    assert m["status"] == "skipped" and m["reason"] == REASON and m["stage"] == stage_name
    assert m["encoder"] == encoder and "mlflow_run_id" not in m and "layers" not in m
    with safe_open(str(root / f"data/probe/{task}/{encoder}.safetensors"), "numpy") as f:
        assert list(f.keys()) == [] and f.metadata()["status"] == "skipped"
    plot = root / f"plots/probe/{task}/{encoder.replace('/', '_')}_by_layer.csv"
    assert list(csv.reader(plot.open())) == [list(CSV_COLUMNS)]


def test_stages_skip_a_diverged_encoder(tmp_path):
    root = diverged_project(tmp_path / "p")
    before = files_under(root)
    res = stage(root, "embed_post", "tweets", "isobn", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert warnings_of(res.stderr) == [f"isoprobe: warning: embed_post tweets/isobn/1 skipped: {REASON}"]  # fmt: skip
    emb = root / "data/embeddings/finetuned/isobn/1/tweets"
    assert sorted(p.name for p in emb.iterdir()) == ["info.json"]
    info = json.loads((emb / "info.json").read_text())
    assert info["status"] == "skipped" and info["reason"] == REASON
    iso = json.loads((root / "metrics/isotropy/tweets/isobn/1.json").read_text())
    assert iso["status"] == "skipped" and iso["reason"] == REASON and "layers" not in iso
    plot = root / "plots/isotropy/tweets/finetuned_isobn_1_by_layer.csv"
    assert plot.read_text() == "layer,isoscore\n"

    res = stage(root, "probe_post", "tweets", "isobn", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert warnings_of(res.stderr) == [f"isoprobe: warning: probe_post tweets/isobn/1 skipped: {REASON}"]  # fmt: skip
    check_probe_skip(root, "tweets", "isobn/1", "probe_post")

    res = stage(root, "probe_post", "pos", "isobn", "1", "--finetune-task", "tweets")
    assert res.returncode == 0, res.stderr[-2000:]
    assert warnings_of(res.stderr) == [f"isoprobe: warning: probe_cross pos/tweets/isobn/1 skipped: {REASON}"]  # fmt: skip
    check_probe_skip(root, "pos", "tweets/isobn/1", "probe_cross")
    # the store is opened up front (fail fast); a skipped instance logs no run into it
    assert runs_in(root / "mlflow.db") == 0
    assert files_under(root) - before - {"mlflow.db"} == {
        "data/embeddings/finetuned/isobn/1/tweets/info.json",
        "metrics/isotropy/tweets/isobn/1.json",
        "plots/isotropy/tweets/finetuned_isobn_1_by_layer.csv",
        "metrics/probe/tweets/isobn/1.json",
        "data/probe/tweets/isobn/1.safetensors",
        "plots/probe/tweets/isobn_1_by_layer.csv",
        "metrics/probe/pos/tweets/isobn/1.json",
        "data/probe/pos/tweets/isobn/1.safetensors",
        "plots/probe/pos/tweets_isobn_1_by_layer.csv",
    }  # nothing else: no MLflow store (no run), no temporaries


def test_dvc_repro_accepts_the_skipped_outputs(tmp_path):
    """The real dvc.yaml entries of embed_post, probe_post and probe_cross (the upstream outputs
    they depend on are placeholders: a skipped instance never reads them)."""
    root = diverged_project(tmp_path / "p")
    for name in ("stages", "src", "treatments"):
        (root / name).symlink_to(REPO / name)
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    wanted = ("embed_post", "probe_post", "probe_cross")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: spec[k] for k in wanted}}))
    for task in ("tweets", "pos"):
        write(root / f"data/prepared/{task}/meta.json", {})
        write(root / f"data/embeddings/pretrained/{task}/info.json", {})
        write(root / f"data/probe/{task}/pretrained.safetensors", "placeholder")
    sh(root, DVC, "init", "--no-scm", "-q")
    res = sh(root, DVC, "repro")
    assert len(warnings_of(res.stderr)) == 3, res.stderr[-3000:]
    assert "up to date" in sh(root, DVC, "status").stdout
    shown = json.loads(sh(root, DVC, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    assert len(shown["data"]) == 3 and all(v == [] for v in shown["data"].values())
    metrics = json.loads(sh(root, DVC, "metrics", "show", "--json").stdout)
    assert "error" not in json.dumps(metrics)
    assert runs_in(root / "mlflow.db") == 0


# --------------------------------------------------------------------------- summary and report

SEEDS = [0, 1, 2, 3, 4, 5]
BAD = 2  # isobn seed 2 diverged
OK = [s for s in SEEDS if s != BAD]


def test_probe_summary_leaves_skipped_encoders_out(tmp_path, monkeypatch):
    from isoprobe.core.config import parse_params
    from isoprobe.core.io import write_safetensors
    from isoprobe.probing import plots as probe_plots
    from isoprobe.probing.run import write_summary_plots

    p = small_params()
    p["finetune"].update(methods=["baseline", "isobn"], seeds=SEEDS)
    params = parse_params(p, "params.yaml")
    monkeypatch.chdir(tmp_path)
    encoders = ["pretrained"] + [f"{m}/{s}" for m in ("baseline", "isobn") for s in SEEDS]
    for enc in encoders:
        path = Path(f"metrics/probe/tweets/{enc}.json")
        if enc == f"isobn/{BAD}":
            write(path, {"status": "skipped", "reason": REASON, "encoder": enc})
            continue
        write(path, {"encoder": enc, "layer": 2, "features": "cls", "labels": ["a", "b"],
                     "layers": probe_layers(0.0, enc != "pretrained")})  # fmt: skip
        centroids = np.random.default_rng(len(enc)).normal(size=(3, 2, 4)).astype(np.float32)
        write_safetensors(f"data/probe/tweets/{enc}.safetensors", {"centroids": centroids})
    seen = []
    monkeypatch.setattr(probe_plots, "by_layer", lambda groups, *a, **k: seen.append(groups))
    n, skipped = write_summary_plots(params, "tweets", tmp_path / "out")
    assert skipped == [f"isobn/{BAD}"] and n == 5
    for groups in seen:
        assert len(groups["isobn"]) == len(OK) and len(groups["baseline"]) == len(SEEDS)
        assert all(r.get("status") != "skipped" for rs in groups.values() for r in rs)


def score(method: str, seed: int) -> float:
    return round(0.7 + 0.01 * ((seed * 7) % 5) + (0.02 + 0.001 * seed if method == "isobn" else 0), 6)  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One task, baseline and isobn over six seeds, isobn seed 2 diverged: its fine-tuning metrics,
    a step trace with a huge gradient, and the skipped outputs of embed_post, probe_post and
    probe_cross."""
    from isoprobe.reporting.reading import ReportInputs
    from isoprobe.reporting.report import build

    root = tmp_path_factory.mktemp("tree")
    write(root / "data/prepared/alpha/meta.json", {"task": "alpha", "kind": "sentence", "metric": "accuracy",
          "label_names": ["a", "b"], "counts": {s: {"rows": 10} for s in ("train", "dev", "test")}})  # fmt: skip
    write(root / "metrics/isotropy/alpha/pretrained.json", {"layers": iso_layers(0.0), **iso_layers(0.0)[-1]})  # fmt: skip
    skip = {"status": "skipped", "reason": REASON}
    for task in ("alpha", "pos"):
        write(root / f"metrics/probe/{task}/pretrained.json", {"encoder": "pretrained", "layers": probe_layers(0.0, False)})  # fmt: skip
    for m in ("baseline", "isobn"):
        for s in SEEDS:
            bad = m == "isobn" and s == BAD
            write(root / f"metrics/finetune/alpha/{m}/{s}.json", {
                "task": "alpha", "method": m, "seed": s, "metric": "accuracy",
                "status": "diverged" if bad else "ok", "diverged_at_step": 17 if bad else None,
                "best_epoch": None if bad else 1, "dev": {} if bad else {"accuracy": 0.5},
                "test": {} if bad else {"accuracy": score(m, s)},
            })  # fmt: skip
            grad = 1e9 if bad else 1.0 + s
            write(root / f"plots/finetune/alpha/{m}/{s}.csv",
                  f"step,epoch,loss,lr,grad_cls,grad_head,grad_total\n1,1,0.5,0.0001,{grad},1,1\n2,1,,0.0001,,,\n")  # fmt: skip
            if bad:
                write(
                    root / f"metrics/isotropy/alpha/{m}/{s}.json", {**skip, "stage": "embed_post"}
                )
                write(root / f"metrics/probe/alpha/{m}/{s}.json", {**skip, "stage": "probe_post"})
                write(
                    root / f"metrics/probe/pos/alpha/{m}/{s}.json", {**skip, "stage": "probe_cross"}
                )
                continue
            write(root / f"metrics/isotropy/alpha/{m}/{s}.json",
                  {"layers": iso_layers(0.1 * s), **iso_layers(0.1 * s)[-1], "head_input": {"isoscore": 0.1 * s}})  # fmt: skip
            for path in (
                f"metrics/probe/alpha/{m}/{s}.json",
                f"metrics/probe/pos/alpha/{m}/{s}.json",
            ):
                write(root / path, {"encoder": f"{m}/{s}", "layers": probe_layers(0.01 * s, True)})
    for task in ("alpha", "pos"):
        for name in ("accuracy", "clusters", "distance", "similarity", "centroids_pca"):
            png(root / f"plots/probe_summary/{task}/{name}.png")
    out = tmp_path_factory.mktemp("out") / "report"
    inp = ReportInputs(
        root=root, model="m", tasks=["alpha"], finetune_tasks=["alpha"], methods=["baseline", "isobn"],
        seeds=SEEDS, probe_tasks=["alpha"], token_tasks=["pos"], hyper={}, n_boot=500,
    )  # fmt: skip
    numbers = build(inp, out)
    html = (out / "index.html").read_text(encoding="utf-8")
    return numbers, html, (out / "summary.md").read_text(encoding="utf-8"), inp


def test_report_numbers_come_from_the_finished_runs_only(report):
    from isoprobe.reporting import stats

    numbers, html, _, inp = report
    tree = Tree()
    tree.feed(html)
    assert not tree.errors and not tree.stack
    iso = numbers["results"]["alpha"]["isobn"]
    assert iso["n"] == len(OK) and sorted(iso["seeds"]) == OK
    v = np.array([score("isobn", s) for s in OK])
    assert iso["median"] == pytest.approx(float(np.median(v)))
    assert iso["std"] == pytest.approx(float(np.std(v, ddof=1)))
    expected = stats.paired_comparison(
        [score("isobn", s) for s in OK], [score("baseline", s) for s in OK], alpha=inp.alpha, seed=inp.seed
    )  # fmt: skip
    assert iso["vs_baseline"]["p_value"] == pytest.approx(expected["p_value"])
    assert iso["vs_baseline"]["delta_mean"] == pytest.approx(expected["delta_mean"])
    tables = tree.tables
    main = next(t for t in tables if t[0][0] == "method" and t[0][-1] == "average")
    row = {r[0]: r for r in main[1:]}["isobn"]
    assert row[1] == f"{np.median(v):.4f} ± {np.std(v, ddof=1):.4f}"
    grad = next(t for t in tables if t[0][:2] == ["method", "steps"])
    rows = {r[0]: r for r in grad[1:]}
    assert rows["isobn"][1] == str(len(OK)) and float(rows["isobn"][-1]) == 6.0  # no 1e9
    after = next(t for t in tables if t[0][:2] == ["encoder", "vectors"])
    col = after[0].index("isoscore")
    rows = {(r[0], r[1]): r for r in after[1:]}
    assert float(rows["isobn", "head input"][col]) == pytest.approx(0.1 * np.median(OK))
    # probing: median over the five probed seeds (layer 0 linear test 0.6 + 0.01 * seed)
    probing = html[html.index('<section id="probing">') : html.index('<section id="failures">')]
    assert probing.count("<h4>isobn (5 runs)</h4>") == 1 and "<h4>alpha/isobn (5 runs)</h4>" in probing  # fmt: skip
    # tables in order: pre-trained, baseline, isobn (alpha, then pos through the alpha encoders)
    linear = [float(t[1][1]) for t in tables if t[0][:2] == ["layer", "linear_test"]]
    expected = [0.6, 0.6 + 0.01 * np.median(SEEDS), 0.6 + 0.01 * np.median(OK)]
    assert linear == pytest.approx(expected * 2)


def test_report_lists_the_divergence_and_the_skips(report):
    numbers, html, md, _ = report
    f = numbers["failures"]
    assert f["runs"] == 1 and f["diverged"] == 1 and f["skipped"] == 3
    failures = html[html.index('<section id="failures">') :]
    cell = r"<td[^>]*>{}</td>"
    for stage_name, task in (("embed_post", "alpha"), ("probe_post", "alpha"),
                             ("probe_cross", "pos (encoder fine-tuned on alpha)")):  # fmt: skip
        cells = [stage_name, re.escape(task), "isobn", str(BAD), REASON]
        assert re.search("".join(cell.format(c) for c in cells), failures), stage_name
    assert "probe metrics missing" not in failures  # skipped is not missing
    assert (
        "- fine-tuning runs diverged: 1" in md and "alpha/isobn/seed 2: diverged at step 17" in md
    )
    assert "- downstream stages skipped: 3" in md
    assert f"probe_post alpha/isobn/seed 2: {REASON}" in md

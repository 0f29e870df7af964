"""benchmarks/gpu_check.py: its --dry-run on the CPU (every section's code path, a tiny dvc repro)
writes the JSON the GPU run will write; its FLOP count, peak table, budget and failure handling."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# loaded by path: putting benchmarks/ on sys.path would let benchmarks/pipeline.py shadow the tests'
# `pipeline` package
_spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["bench_gpu_check"] = gpu_check  # dataclasses and pickling look modules up by name
_spec.loader.exec_module(gpu_check)


def run_check(out: Path, *args: str, timeout: int = 420) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - t0
    assert out.is_file(), res.stderr[-3000:]
    return res.returncode, json.loads(out.read_text()), seconds


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[int, dict, float]:
    return run_check(tmp_path_factory.mktemp("gpu_check") / "dry.json", "--dry-run")


@pytest.mark.e2e
def test_dry_run_every_section_ok(dry):
    rc, data, seconds = dry
    failed = {k: v.get("error") for k, v in data["sections"].items() if v["status"] != "ok"}
    assert rc == 0 and not failed, failed
    assert data["dry_run"] is True and data["device_requested"] == "cpu"
    assert list(data["sections"]) == list(gpu_check.SECTIONS)
    assert data["summary"] == {"ok": 6, "failed": 0, "skipped": 0, "pending": 0}
    assert 0 < data["seconds"] <= seconds and data["started"] and data["finished"]
    for name, sec in data["sections"].items():
        assert sec["seconds"] > 0 and sec["timeout_seconds"] > 0 and sec["error"] is None, name
        assert sec["seconds"] <= sec["timeout_seconds"], name
        # every limit ends within the budget (time a section leaves goes to the next)
        assert sec["started_at_seconds"] + sec["timeout_seconds"] <= data["budget_seconds"] + 1
        assert isinstance(sec["settings"], dict) and isinstance(sec["figures"], dict), name


@pytest.mark.e2e
def test_dry_run_figures(dry):
    _, data, _ = dry
    s = {k: v["figures"] for k, v in data["sections"].items()}
    dev = s["device"]
    assert dev["cuda_available"] is False and dev["device"] == "cpu"
    assert dev["peak_tflops"] > 0 and dev["peak_source"].startswith("measured")

    t = s["tests"]
    assert t["collected"] >= 1 and t["failed"] == 0 and t["error"] == 0
    assert t["passed"] + t["skipped"] == t["collected"] == len(t["tests"])
    assert t["skipped"] == t["collected"]  # no CUDA here: every selected test skips
    assert any("test_cuda_move_keeps_buffers" in n for n in t["tests"])

    e = s["extract"]
    assert e["rows"] == data["sections"]["extract"]["settings"]["rows"]
    assert e["autocast"] == "off (fp32)" and e["mean_tokens_per_row"] > 1
    assert e["executed_gflops"] >= e["model_gflops"] > 0
    assert e["padded_tokens"] >= e["mean_tokens_per_row"] * e["rows"]
    for part in ("encode_rows", "forward_only"):
        assert e[part]["sentences_per_second"] > 0 and e[part]["seconds"]
        assert e[part]["executed_mfu"] >= e[part]["mfu"] > 0
    assert e["agreement"]["within_tolerance"] and e["agreement"]["tolerance"] == 1e-4

    f = s["finetune"]
    assert f["autocast"] == "off (fp32)" and f["train_gflops_per_example"] > 0
    for side in ("isoprobe", "trainer"):
        assert f["sides"][side]["examples_per_second"] > 0 and f["sides"][side]["mfu"] > 0
    ratio = (
        f["sides"]["isoprobe"]["examples_per_second"] / f["sides"]["trainer"]["examples_per_second"]
    )
    assert f["isoprobe_over_trainer"] == pytest.approx(ratio, rel=0.01)
    assert f["loss_similar"] is True and f["benchmark"]["benchmark"] == "finetune"

    h = s["heads"]
    assert h["hidden"] == 768 and h["baseline_step_ms"] > 0 and h["baseline_step_mfu"] > 0
    assert set(h["head_only_ms"]) >= {"baseline", "isobn", "whiten"}
    assert isinstance(h["isobn_head_extra_pct_of_step"], float)

    r = s["repro"]
    assert r["repro_seconds"] > 0 and r["stages_run"] == len(r["stages"]) >= 10
    assert {"embed@tweets", "finetune@tweets-baseline-0", "report"} <= set(r["stages"])
    assert r["embed_device"] == "cpu" and r["finetune"]["baseline"]["device"] == "cpu"
    assert r["finetune"]["baseline"]["status"] == "ok" and r["report_summary"] is True
    assert not Path(r["workdir"]).exists()  # the temporary copy is removed


@pytest.mark.e2e
def test_dry_run_targets_reported(dry):
    _, data, _ = dry
    targets = data["targets"]
    assert set(targets) == set(gpu_check.TARGETS)
    assert targets["extraction_sentences_per_second"]["at_least"] == 100_000
    assert targets["finetune_isoprobe_over_trainer"]["at_least"] == 1.2
    for t in targets.values():
        assert isinstance(t["met"], bool) and t["status"] == ("met" if t["met"] else "missed")
        assert t["value"] is not None and "dry run" in t["note"]
    assert targets["extraction_sentences_per_second"]["value"] > 0


def test_failed_section_keeps_the_others(tmp_path):
    rc, data, _ = run_check(
        tmp_path / "x.json",
        "--dry-run",
        "--sections", "extract", "device",
        "--set", "extract.model=embedded:no-such-model",
        timeout=180,
    )  # fmt: skip
    assert rc == 1
    sec = data["sections"]
    assert sec["extract"]["status"] == "failed" and "no-such-model" in sec["extract"]["error"]
    assert sec["device"]["status"] == "ok" and sec["device"]["figures"]["peak_tflops"] > 0
    assert {sec[k]["status"] for k in ("tests", "finetune", "heads", "repro")} == {"skipped"}
    assert data["targets"]["extraction_sentences_per_second"]["met"] is None
    assert data["summary"] == {"ok": 1, "failed": 1, "skipped": 4, "pending": 0}


def test_budget_exhausted_skips(tmp_path):
    rc, data, seconds = run_check(tmp_path / "x.json", "--budget-seconds", "1", timeout=60)
    assert rc == 0 and seconds < 30
    assert all(s["status"] == "skipped" for s in data["sections"].values())
    assert "budget exhausted" in data["sections"]["device"]["error"]


def test_forward_flops_match_the_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, attn_implementation="eager")  # fmt: skip
    model = BertModel(cfg, add_pooling_layer=False).eval()
    for lengths in ([24, 24, 24], [7], [3, 3]):
        ids = torch.randint(5, 100, (len(lengths), lengths[0]))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(input_ids=ids)
        assert gpu_check.forward_flops(cfg.to_dict(), lengths) == counter.get_total_flops()


def test_padded_lengths_and_peak_table():
    import numpy as np

    lengths = np.array([3, 9, 5, 7, 2])
    order = np.argsort(-lengths, kind="stable")
    assert gpu_check.padded_lengths(lengths, 2, order) == [9, 9, 5, 5, 2]
    table = {
        "NVIDIA H200": 989.0,
        "NVIDIA H100 80GB HBM3": 989.0,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A10G": 70.0,
        "NVIDIA L4": 121.0,
        "NVIDIA L40S": 362.0,
    }
    for name, tflops in table.items():
        assert gpu_check.peak_from_table(name)[1] == tflops, name
    assert gpu_check.peak_from_table("Some Future GPU") is None


def test_section_limits_share_the_budget():
    todo = list(gpu_check.SECTIONS)
    remaining, limits = 420.0, []
    for i in range(len(todo)):  # every section using its whole limit
        limits.append(gpu_check.section_timeouts(remaining, todo[i:]))
        remaining -= limits[-1]
    assert sum(limits) == pytest.approx(420.0) and min(limits) > 15
    assert gpu_check.parse_set(["extract.rows=64", "repro.model=tiny"]) == {
        "extract": {"rows": 64},
        "repro": {"model": "tiny"},
    }
    with pytest.raises(SystemExit):
        gpu_check.parse_set(["nosuch.rows=1"])

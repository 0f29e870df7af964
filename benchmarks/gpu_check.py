"""GPU check: one command that exercises isoprobe's CUDA paths and measures them on one GPU.

Sections, in this order, each in its own Python process with its own time limit (a crash, a hang
or an out-of-memory in one section does not lose the others; the JSON file is rewritten atomically
after each section):

- device: torch/CUDA versions, device name, memory, bf16 support, the TF32 switches after
  `pick_device`, measured dense bf16 and fp32 (TF32) matmul TFLOP/s, and the peak bf16 TFLOP/s the
  MFU figures divide by (`--peak-tflops`, else the table `PEAK_BF16_TFLOPS` by device name, else the
  measured matmul rate);
- tests: the tests that skip without CUDA (skipif reason naming CUDA/GPU, or "cuda" in the test
  name), run with pytest; passed/failed/skipped counts and each test's outcome;
- extract: embedding extraction with the embedded all-MiniLM-L6-v2 (max length 64, large
  length-sorted batches, bf16 autocast on CUDA): `encode_rows` end to end (tokenization, batches,
  forward, pooling, copy to host; what the embed stage runs) and the encoder forward alone on
  pre-built batches, sentences/s and MFU; agreement with the fp32 reference loop of embed.py;
- finetune: benchmarks/finetune.py's comparison (isoprobe `finetune()` vs `transformers.Trainer`,
  both bf16 on CUDA, same rows), examples/s, ratio and MFU;
- heads: benchmarks/heads.py at hidden 768 (random 12-layer BERT): the [CLS] head overhead as % of
  a training step, and the step's MFU;
- repro: a tiny `dvc repro` (tweets, a few dozen rows, 1 seed, embed.device and
  finetune.train.device set to the device) in a fresh temporary copy of the working tree, its wall
  time and per-stage time, and whether the stages reported that device.

FLOPs are counted analytically from the model config: per token and layer 2 x (4 H^2 + 2 H F) for
the Q/K/V/output and feed-forward matmuls, plus 4 H T per token for attention scores and values (T:
the row's length); embeddings, layer norms, softmax and the pooler are left out (< 1%). Training
counts 3 x the forward. "model" FLOPs use each row's real length; "executed" FLOPs (extraction) the
padded batch shapes. MFU = FLOP/s / peak.

Targets (met / missed in the JSON): extraction >= 100,000 sentences/s on one H200 (encode_rows),
fine-tuning >= 1.2x Trainer examples/s, IsoBN head <= 2% of a step. The time limits are shares of
--budget-seconds (default 420: 7 minutes); time one section leaves unused goes to the next.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--budget-seconds 420] [--peak-tflops T]
        [--sections device tests extract finetune heads repro] [--set extract.rows=65536 ...]
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json   # CPU, tiny settings (~2 min)
    bash benchmarks/gpu_check.sh [same options]   # offline install from wheels/ if no .venv, then this

`--dry-run` runs every section on the CPU with tiny settings (a few rows, a 1-layer 768 BERT, a
tiny random BERT for the dvc repro); the CUDA tests are then collected and skipped. `--set
SECTION.KEY=VALUE` changes one setting (see SETTINGS; VALUE is JSON, else a string).

Offline install (the GPU machine has no internet; the wheels travel with the working tree). On a
connected Linux x86_64 machine with the GPU machine's Python minor version, in the checkout:

    python -m pip download -d wheels torch==2.13.0 '.[test]' 'setuptools>=68' wheel

(PyPI's Linux torch wheel is a CUDA build and pulls its nvidia-* wheels, about 3 GB; for another
CUDA version add `--index-url https://download.pytorch.org/whl/cu126 --extra-index-url
https://pypi.org/simple`; for another Python or platform add `--python-version 3.11 --platform
manylinux_2_28_x86_64 --only-binary=:all:`.) Copy the tree with wheels/ to the GPU machine, then:

    python3 -m venv .venv && . .venv/bin/activate
    python -m pip install --no-index --find-links wheels torch==2.13.0 -e '.[test]'
    python benchmarks/gpu_check.py --out gpu_check.json

(`benchmarks/gpu_check.sh` does these steps when .venv is missing.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
MODEL = "embedded:all-MiniLM-L6-v2"

SECTIONS = ("device", "tests", "extract", "finetune", "heads", "repro")
# share of the remaining budget each section may use (renormalised over the sections left)
WEIGHTS = {"device": 0.08, "tests": 0.12, "extract": 0.15, "finetune": 0.22, "heads": 0.12,
           "repro": 0.31}  # fmt: skip
MIN_SECONDS = 15  # a section is skipped when less than this is left of the budget

TARGETS = {
    "extraction_sentences_per_second": {"at_least": 100_000, "section": "extract",
                                        "figure": "encode_rows.sentences_per_second"},
    "finetune_isoprobe_over_trainer": {"at_least": 1.2, "section": "finetune",
                                       "figure": "isoprobe_over_trainer"},
    "isobn_head_overhead_pct_of_step": {"at_most": 2.0, "section": "heads",
                                        "figure": "isobn_head_extra_pct_of_step"},
}  # fmt: skip

# Dense (no sparsity) bf16 tensor-core TFLOP/s by device name; the first key found in
# torch.cuda.get_device_name() wins, so longer names come first.
PEAK_BF16_TFLOPS = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("H800", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A30", 165.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)

SETTINGS = {
    "gpu": {
        "tests": {},
        "extract": {"rows": 131072, "batch_size": 1024, "max_length": 64, "repeats": 3,
                    "agreement_rows": 512, "model": MODEL},
        "finetune": {"rows": 4096, "batch_size": 32, "max_length": 64, "repeats": 3,
                     "eval_rows": 64},
        "heads": {"layers": 12, "batch": 32, "seq": 64, "repeats": 5, "warmup": 2,
                  "head_iters": 50, "methods": ["baseline", "isobn", "whiten"]},
        "repro": {"rows": {"train": 40, "dev": 12, "test": 12}, "methods": ["baseline", "isobn"],
                  "model": MODEL, "embed_max_length": 64},
    },
    "dry": {
        "tests": {},
        "extract": {"rows": 128, "batch_size": 32, "max_length": 64, "repeats": 1,
                    "agreement_rows": 16, "model": MODEL},
        "finetune": {"rows": 32, "batch_size": 16, "max_length": 32, "repeats": 1,
                     "eval_rows": 4},
        "heads": {"layers": 1, "batch": 4, "seq": 16, "repeats": 2, "warmup": 1,
                  "head_iters": 5, "methods": ["baseline", "isobn"]},
        "repro": {"rows": {"train": 24, "dev": 9, "test": 9}, "methods": ["baseline"],
                  "model": "tiny", "embed_max_length": 32},
    },
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- pure helpers


def peak_from_table(name: str) -> tuple[str, float] | None:
    """(table key, dense bf16 TFLOP/s) for a CUDA device name, or None when it is not listed."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return key, tflops
    return None


def forward_flops(config: dict, lengths) -> float:
    """Matmul FLOPs of one encoder forward over rows of the given lengths (see the module doc)."""
    import numpy as np

    h = int(config["hidden_size"])
    f = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    t = np.asarray(lengths, dtype=np.float64)
    per_token = 2.0 * (4 * h * h + 2 * h * f)
    return float(layers * (per_token * t.sum() + 4.0 * h * (t * t).sum()))


def padded_lengths(lengths, batch_size: int, order) -> list[int]:
    """Each row's length as fed to the encoder when batches of `order` are padded to their longest."""
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out += [int(max(lengths[i] for i in idx))] * len(idx)
    return out


def section_timeouts(remaining: float, sections: list[str]) -> float:
    """Seconds for the first of `sections`: its weight's share of what is left."""
    total = sum(WEIGHTS[s] for s in sections)
    return remaining * WEIGHTS[sections[0]] / total


def get_path(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def evaluate_targets(sections: dict, dry_run: bool) -> dict:
    out = {}
    for name, t in TARGETS.items():
        sec = sections.get(t["section"], {})
        value = (
            get_path(sec.get("figures") or {}, t["figure"]) if sec.get("status") == "ok" else None
        )
        entry = {k: v for k, v in t.items() if k in ("at_least", "at_most")}
        entry |= {"section": t["section"], "figure": t["figure"], "value": value}
        if value is None:
            entry |= {"met": None, "status": "not measured"}
        else:
            met = value >= t["at_least"] if "at_least" in t else value <= t["at_most"]
            entry |= {"met": bool(met), "status": "met" if met else "missed"}
        if dry_run:
            entry["note"] = "dry run: CPU and tiny settings; the target is for one H200"
        out[name] = entry
    return out


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def parse_set(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in SECTIONS:
            raise SystemExit(f"--set {item}: expected SECTION.KEY=VALUE with SECTION in {SECTIONS}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


# --------------------------------------------------------------------------- child: shared


def load_bench(name: str):
    """benchmarks/<name>.py as a module (named bench_<name>, so it never shadows a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device, dtype, n: int, iters: int, trials: int = 3) -> float:
    """Measured TFLOP/s of n x n @ n x n matmuls: the best of `trials` timed loops after a warm-up
    (the best, so that a moment of other load on a shared machine does not lower the peak)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = max(best, 2.0 * n**3 * iters / (time.perf_counter() - t0) / 1e12)
    return best


def resolve_peak(ctx: dict, device) -> dict:
    """The peak TFLOP/s MFU divides by: --peak-tflops, the table, or a measured matmul rate."""
    import torch

    if ctx.get("peak"):
        return ctx["peak"]
    if ctx.get("peak_tflops"):
        return {"tflops": float(ctx["peak_tflops"]), "source": "--peak-tflops"}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        hit = peak_from_table(name)
        if hit:
            return {"tflops": hit[1], "source": f"table: {hit[0]} dense bf16 ({name})"}
        rate = matmul_tflops(device, torch.bfloat16, 8192, 20)
        return {"tflops": rate, "source": f"measured bf16 8192^3 matmul ({name} not in the table)"}
    rate = matmul_tflops(device, torch.float32, 1024, 5, trials=5)
    return {"tflops": rate, "source": "measured fp32 1024^3 matmul (CPU: no bf16 autocast)"}


def pick(ctx: dict):
    from isoprobe.core.device import pick_device

    return pick_device(ctx["device"], ctx.get("threads", 0), key="--device")


def mfu(flops_per_second: float, peak: dict) -> float:
    return flops_per_second / (peak["tflops"] * 1e12)


# --------------------------------------------------------------------------- sections


def section_device(ctx: dict, s: dict) -> dict:
    import platform

    import torch

    fig: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count(),
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "accelerate", "tokenizers", "dvc", "mlflow", "isoprobe"):
        with contextlib.suppress(PackageNotFoundError):
            fig[pkg] = version(pkg)
    device = pick(ctx)
    fig["device"] = str(device)
    fig["threads"] = torch.get_num_threads()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        fig |= {
            "name": torch.cuda.get_device_name(device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul_after_pick_device": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn_after_pick_device": torch.backends.cudnn.allow_tf32,
            "matmul_bf16_tflops_measured": round(
                matmul_tflops(device, torch.bfloat16, 8192, 50), 1
            ),
            "matmul_fp32_tf32_tflops_measured": round(
                matmul_tflops(device, torch.float32, 8192, 10), 1
            ),
        }
    else:
        fig["name"] = platform.processor() or platform.machine()
        fig["matmul_fp32_tflops_measured"] = round(
            matmul_tflops(device, torch.float32, 1024, 5, trials=5), 4
        )
    peak = resolve_peak(ctx, device)
    fig["peak_tflops"] = peak["tflops"]
    fig["peak_source"] = peak["source"]
    return fig


class CudaOnly:
    """pytest plugin: keep the tests that skip without CUDA; count the outcomes."""

    def __init__(self) -> None:
        self.selected: list[str] = []
        self.counts: dict[str, int] = {}
        self.outcomes: dict[str, str] = {}

    @staticmethod
    def needs_cuda(item) -> bool:
        for mark in item.iter_markers("skipif"):
            reason = str(mark.kwargs.get("reason", "")).lower()
            if "cuda" in reason or "gpu" in reason:
                return True
        return "cuda" in item.name.lower()

    def pytest_collection_modifyitems(self, config, items) -> None:
        keep = [i for i in items if self.needs_cuda(i)]
        drop = [i for i in items if not self.needs_cuda(i)]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
        self.selected = [i.nodeid for i in keep]

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped:
            self.outcomes.setdefault(report.nodeid, "skipped")
        elif report.when == "call":
            self.outcomes[report.nodeid] = "passed"


def section_tests(ctx: dict, s: dict) -> dict:
    import pytest

    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if "cuda" in p.read_text(encoding="utf-8", errors="replace").lower()
        and p.parent.name != "benchmarks"  # this check's own tests
    )
    if not files:
        raise RuntimeError("no test file mentions CUDA")
    plugin = CudaOnly()
    os.chdir(ROOT)
    args = [*files, "-q", "-rA", "-p", "no:cacheprovider", *s.get("pytest_args", [])]
    if importlib.util.find_spec("xdist") is not None:
        args += ["-n", "0"]  # in this process: pyproject's `-n auto` would start a worker per core
    with contextlib.redirect_stdout(sys.stderr):
        code = pytest.main(args, plugins=[plugin])
    counts = {k: sum(v == k for v in plugin.outcomes.values())
              for k in ("passed", "failed", "error", "skipped")}  # fmt: skip
    import torch

    fig = {
        "files": files,
        "collected": len(plugin.selected),
        **counts,
        "exit_code": int(code),
        "cuda_available": torch.cuda.is_available(),
        "tests": plugin.outcomes,
    }
    if not plugin.selected:
        raise RuntimeError(f"no CUDA test collected from {files} (pytest exit {int(code)})")
    if counts["failed"] or counts["error"] or int(code) not in (0, 5):
        raise SectionFailed(f"{counts['failed']} failed, {counts['error']} errors", fig)
    return fig


class SectionFailed(RuntimeError):
    """A section that measured something but did not pass: its figures are kept."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def tile_rows(rows: list[dict], n: int) -> list[dict]:
    """n rows: `rows` repeated (the embedded corpus has 38k; throughput needs more)."""
    return (rows * math.ceil(n / len(rows)))[:n]


def section_extract(ctx: dict, s: dict) -> dict:
    import numpy as np
    import torch
    from transformers import AutoConfig

    from isoprobe.core.device import autocast
    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.embed.extract import _tokenize, encode_rows  # _tokenize: what encode_rows runs

    emb = load_bench("embed")
    device = pick(ctx)
    peak = resolve_peak(ctx, device)
    deadline = time.perf_counter() + ctx["deadline_seconds"]
    rows = tile_rows(emb.sample_rows(s["rows"], 0), s["rows"])
    resolved = resolve_model(s["model"])
    config = AutoConfig.from_pretrained(resolved.location).to_dict()
    encoder, tokenizer, _ = load_encoder(resolved)
    encoder.to(device).eval()
    bs, max_len = s["batch_size"], s["max_length"]

    def encode(part):
        return encode_rows(encoder, tokenizer, part, batch_size=bs, max_length=max_len,
                           device=device, progress=False)  # fmt: skip

    encode(rows[: 2 * bs])  # warm-up
    t0 = time.perf_counter()
    enc, _ = _tokenize(tokenizer, rows, "sentence", max_len)
    tokenize_seconds = time.perf_counter() - t0
    lengths = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")

    times, out = [], None
    for rep in range(s["repeats"]):
        if rep and time.perf_counter() + times[-1] > deadline:
            log(f"extract: stopping after {rep} repeats (section deadline)")
            break
        out = None  # free the previous arrays first
        sync(device)
        t0 = time.perf_counter()
        out = encode(rows)
        sync(device)
        times.append(time.perf_counter() - t0)
        log(f"extract: encode_rows {len(rows)} rows in {times[-1]:.2f} s")
    n_layers = int(config["num_hidden_layers"]) + 1
    assert out["cls"].shape == (n_layers, len(rows), config["hidden_size"])
    assert np.isfinite(out["cls"]).all() and np.isfinite(out["mean"]).all()
    out = None

    # the encoder forward alone, on batches tokenized and moved to the device beforehand
    names = [k for k in tokenizer.model_input_names if k in enc]
    batches = []
    for st in range(0, len(rows), bs):
        idx = order[st : st + bs]
        feats = tokenizer.pad([{k: enc[k][i] for k in names} for i in idx], return_tensors="pt")
        batches.append({k: v.to(device) for k, v in feats.items()})
    fwd_times = []
    with torch.inference_mode(), autocast(device):
        for b in batches[:2]:
            encoder(**b, output_hidden_states=True)
        for rep in range(s["repeats"]):
            if rep and time.perf_counter() + fwd_times[-1] > deadline:
                break
            sync(device)
            t0 = time.perf_counter()
            for b in batches:
                encoder(**b, output_hidden_states=True)
            sync(device)
            fwd_times.append(time.perf_counter() - t0)
    del batches

    # bf16 autocast (CUDA) against embed.py's fp32 reference loop on a subset
    sub = rows[: s["agreement_rows"]]
    ns = argparse.Namespace(batch_size=min(bs, 256), max_length=max_len)
    ref = emb.run_naive(encoder, tokenizer, sub, ns, device)
    got = encode(sub)
    diff = float(np.abs(got["cls"][-1] - ref["cls"][-1]).max())
    tolerance = 0.1 if device.type == "cuda" else 1e-4

    model_flops = forward_flops(config, lengths)
    executed_flops = forward_flops(config, padded_lengths(lengths, bs, order))
    enc_s, fwd_s = float(np.median(times)), float(np.median(fwd_times))
    fig = {
        "model": s["model"],
        "device": str(device),
        "autocast": "bf16" if device.type == "cuda" else "off (fp32)",
        "rows": len(rows),
        "batch_size": bs,
        "max_length": max_len,
        "mean_tokens_per_row": round(float(lengths.mean()), 2),
        "padded_tokens": int(sum(padded_lengths(lengths, bs, order))),
        "model_gflops": round(model_flops / 1e9, 3),
        "executed_gflops": round(executed_flops / 1e9, 3),
        "peak_tflops": peak["tflops"],
        "peak_source": peak["source"],
        "tokenize_seconds": round(tokenize_seconds, 3),
        "encode_rows": {
            "measures": "encode_rows end to end: tokenization, length-sorted batches, forward "
            "(every layer), [CLS] and mean pooling, copy to host (the embed stage minus the write)",
            "seconds": [round(t, 3) for t in times],
            "sentences_per_second": round(len(rows) / enc_s, 1),
            "mfu": mfu(model_flops / enc_s, peak),
            "executed_mfu": mfu(executed_flops / enc_s, peak),
        },
        "forward_only": {
            "measures": "encoder(**batch, output_hidden_states=True) on pre-built device batches",
            "seconds": [round(t, 3) for t in fwd_times],
            "sentences_per_second": round(len(rows) / fwd_s, 1),
            "mfu": mfu(model_flops / fwd_s, peak),
            "executed_mfu": mfu(executed_flops / fwd_s, peak),
        },
        "agreement": {
            "rows": len(sub),
            "reference": "embed.py run_naive: fp32, padded to max length",
            "cls_last_layer_max_abs_diff": diff,
            "tolerance": tolerance,
            "within_tolerance": diff <= tolerance,
        },
    }
    if device.type == "cuda":
        fig["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if diff > tolerance:
        raise SectionFailed(f"bf16 vs fp32 [CLS] differ by {diff:.3g} > {tolerance}", fig)
    return fig


def section_finetune(ctx: dict, s: dict) -> dict:
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from isoprobe.core.models import load_tokenizer, resolve_model
    from isoprobe.finetune.loop import encode_split

    ft = load_bench("finetune")
    device = pick(ctx)
    peak = resolve_peak(ctx, device)
    threads = torch.get_num_threads()
    args = argparse.Namespace(
        rows=s["rows"], max_length=s["max_length"], batch_size=s["batch_size"],
        repeats=s["repeats"], eval_rows=s["eval_rows"], seed=0, device=device.type,
        group_by_length=False, isobn=False, trainer_model="wrapper",
    )  # fmt: skip
    cfg = ft.train_config(args.batch_size, args.max_length, args.device, threads)
    hf_logging.disable_progress_bar()
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its metrics
        result = ft.measure(args, cfg, device, threads, ft.fused_adamw(cfg))
    # model FLOPs per training example: 3 x the forward over the real lengths of the same rows
    resolved = resolve_model(ft.MODEL)
    config = AutoConfig.from_pretrained(resolved.location).to_dict()
    splits, _ = ft.prepare(args.rows, args.eval_rows, args.seed)
    _, lengths, _ = encode_split(load_tokenizer(resolved), splits["train"], args.max_length)
    per_example = 3 * forward_flops(config, lengths) / len(lengths)
    sides = {}
    for name, side in result["sides"].items():
        eps = side["examples_per_second"]
        sides[name] = {"examples_per_second": eps, "mfu": mfu(eps * per_example, peak),
                       "padding_fraction": side["padding_fraction"]}  # fmt: skip
    fig = {
        "device": str(device),
        "autocast": result["autocast"],
        "rows": result["rows"],
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "train_gflops_per_example": round(per_example / 1e9, 4),
        "peak_tflops": peak["tflops"],
        "peak_source": peak["source"],
        "sides": sides,
        "isoprobe_over_trainer": result["ratios"]["isoprobe_over_trainer"],
        "loss_similar": result["sanity"]["similar"],
        "benchmark": result,
    }
    if device.type == "cuda":
        fig["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if not result["sanity"]["similar"]:
        raise SectionFailed("isoprobe's and Trainer's mean losses differ beyond tolerance", fig)
    return fig


def section_heads(ctx: dict, s: dict) -> dict:
    import statistics

    import torch

    hb = load_bench("heads")
    device = pick(ctx)
    peak = resolve_peak(ctx, device)
    methods = list(dict.fromkeys(["baseline", *s["methods"]]))
    args = argparse.Namespace(
        layers_768=s["layers"], batch=s["batch"], seq=s["seq"], classes=3, repeats=s["repeats"],
        warmup=s["warmup"], head_iters=s["head_iters"], methods=methods, seed=0,
    )  # fmt: skip
    res = hb.bench_hidden(768, args, device)
    step = res["methods"]["baseline"]["median_step_ms"] / 1e3
    config = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": s["layers"]}
    step_flops = 3 * forward_flops(config, [s["seq"]] * s["batch"])
    iso = res["methods"]["isobn"]
    fig = {
        "device": str(device),
        "autocast": "bf16" if device.type == "cuda" else "off (fp32)",
        "hidden": 768,
        "layers": s["layers"],
        "batch": s["batch"],
        "seq": s["seq"],
        "repeats": s["repeats"],
        "baseline_step_ms": round(step * 1e3, 3),
        "baseline_step_mfu": mfu(step_flops / step, peak),
        "peak_tflops": peak["tflops"],
        "isobn_head_extra_pct_of_step": iso["head_extra_over_baseline_pct_of_step"],
        "isobn_step_overhead_pct": iso.get("overhead_pct"),
        "head_only_ms": {m: r["head_only_ms"] for m, r in res["methods"].items()},
        "step_ms_median": statistics.median(res["methods"]["baseline"]["step_ms"]),
        "benchmark": res,
    }
    if device.type == "cuda":
        fig["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return fig


# ---- repro


SKIP_TOP = {".git", ".venv", "venv", "data", "models", "metrics", "plots", "report",
            "checkpoints", "mlflow.db", "mlartifacts", "mlruns", "tmp", ".isoprobe", ".ci-plots",
            "wheels", "dvc.lock"}  # fmt: skip
SKIP_ANY = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def tree_files(root: Path, use_git: bool) -> list[str]:
    """The working tree's files without outputs: git's view (tracked + untracked, not ignored)
    where there is a git checkout, else a walk that leaves out what .gitignore and DVC cover."""
    if use_git:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.split("\0")  # fmt: skip
        files = [f for f in listed if f and (root / f).is_file()]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            dirnames[:] = [
                d for d in dirnames
                if d not in SKIP_ANY and not d.endswith(".egg-info")
                and not (rel == Path(".") and d in SKIP_TOP)
                and not (rel == Path(".dvc") and d in ("cache", "tmp"))
                and not (rel == Path("benchmarks") and d == ".cache")
            ]  # fmt: skip
            files += [str(rel / f) for f in filenames if not (rel == Path(".") and f in SKIP_TOP)]
    return [
        f for f in files
        if not f.startswith(("metrics/", "plots/", "report/", "data/", "models/", "checkpoints/"))
        and f != "dvc.lock" and not any(p in SKIP_ANY for p in Path(f).parts)
    ]  # fmt: skip


def repro_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # fmt: skip
    return env


def tiny_params(params: dict, s: dict, device: str, model: str) -> dict:
    dry = s.get("dry", False)
    params["model"]["name"] = model
    params["pipeline"]["tasks"] = ["tweets"]
    params["tasks"]["tweets"]["max_rows"] = dict(s["rows"])
    params["embed"].update(batch_size=16, max_length=s["embed_max_length"], device=device)
    params["isotropy"]["heatmap_dims"] = 8
    params["finetune"].update(tasks=["tweets"], methods=list(s["methods"]), seeds=[0])
    params["finetune"]["train"].update(epochs=1, batch_size=8, max_length=32, device=device)
    params["probe"].update(tasks=["tweets"], token_tasks=[])
    params["probe"]["linear"]["c_grid"] = [1.0] if dry else [0.1, 1.0]
    params["probe"]["mlp"].update(hidden_grid=[[32, 32]], l2_grid=[1e-4] if dry else [1e-4, 1e-2])
    params["report"]["n_boot"] = 200 if dry else 1000
    params["tracking"]["enabled"] = bool(s.get("tracking", True))
    return params


def section_repro(ctx: dict, s: dict) -> dict:
    import yaml

    device = ctx["device"] if ctx["device"] != "auto" else "cuda"
    use_git = shutil.which("git") is not None and (ROOT / ".git").exists()
    # inside the parent's scratch folder, which it removes even when this process was killed
    base = Path(tempfile.mkdtemp(prefix="repro-", dir=ctx["scratch"]))
    fig: dict = {"workdir": str(base), "device": device}
    try:
        t0 = time.perf_counter()
        dest = base / "repo"
        files = tree_files(ROOT, use_git and not s.get("no_git", False))
        for f in files:
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
        if (ROOT.parent / "shared").is_dir():  # like the real checkout (tweets does not need it)
            (base / "shared").symlink_to(ROOT.parent / "shared")
        model = s["model"]
        if model == "tiny":
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import make_tiny_bert  # the tests' tiny random BERT (2 layers, 32 wide)

            model = str(make_tiny_bert(base / "tiny-bert"))
        params = tiny_params(yaml.safe_load((dest / "params.yaml").read_text()), s, device, model)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = repro_env()
        if shutil.which("git") and not s.get("no_git", False):
            git = ["git", "-c", "user.name=gpu_check", "-c", "user.email=gpu_check@localhost"]
            for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "c"]):
                subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
            fig["scm"] = "git"
        else:
            subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "core.no_scm",
                            "true"], cwd=dest, env=env, check=True, capture_output=True)  # fmt: skip
            fig["scm"] = "none (core.no_scm)"
        fig |= {"files_copied": len(files), "setup_seconds": round(time.perf_counter() - t0, 2),
                "model": s["model"], "rows": s["rows"], "methods": s["methods"]}  # fmt: skip

        stages: list[list] = []
        tail: deque[str] = deque(maxlen=40)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=dest, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(line, end="", file=sys.stderr, flush=True)
            if line.startswith("Running stage '"):
                stages.append([line.split("'")[1], time.perf_counter()])
        rc = proc.wait()
        end = time.perf_counter()
        fig["repro_seconds"] = round(end - t0, 2)
        marks = [t for _, t in stages] + [end]
        fig["stages"] = {n: round(marks[i + 1] - t, 2) for i, (n, t) in enumerate(stages)}
        fig["stages_run"] = len(stages)
        if rc != 0:
            raise SectionFailed(f"dvc repro exited {rc}: " + "\n".join(tail), fig)
        info = json.loads((dest / "data/embeddings/pretrained/tweets/info.json").read_text())
        fig["embed_device"] = info.get("device")
        fig["embed_autocast"] = info.get("autocast")
        fig["finetune"] = {}
        for m in s["methods"]:
            met = json.loads((dest / f"metrics/finetune/tweets/{m}/0.json").read_text())
            fig["finetune"][m] = {k: met.get(k) for k in ("status", "device", "dev", "test",
                                                          "seconds", "examples_per_second")}  # fmt: skip
        fig["report_summary"] = (dest / "report/summary.md").is_file()
        devices = {fig["embed_device"], *(v["device"] for v in fig["finetune"].values())}
        wrong = sorted(d for d in devices if not str(d).startswith(device))
        if wrong or not fig["report_summary"]:
            raise SectionFailed(f"stages ran on {wrong} instead of {device}"
                                if wrong else "no report/summary.md", fig)  # fmt: skip
        return fig
    finally:
        if not ctx.get("keep_workdir"):
            shutil.rmtree(base, ignore_errors=True)


RUNNERS = {"device": section_device, "tests": section_tests, "extract": section_extract,
           "finetune": section_finetune, "heads": section_heads, "repro": section_repro}  # fmt: skip


def child_main(config_path: str) -> int:
    ctx = json.loads(Path(config_path).read_text())
    result_path = Path(ctx["result"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        figures = RUNNERS[ctx["section"]](ctx, ctx["settings"])
        write_atomic(result_path, {"status": "ok", "figures": figures})
        return 0
    except SectionFailed as err:
        write_atomic(result_path, {"status": "failed", "error": str(err), "figures": err.figures})
        return 1
    except (Exception, SystemExit) as err:  # noqa: BLE001 (any failure is the section's result)
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        write_atomic(result_path, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                   "traceback": text[-6000:]})  # fmt: skip
        print(text, file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- parent


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.current: str | None = None
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check-", dir=args.workdir))

    def run_child(self, section: str, settings: dict, timeout: float, peak: dict | None) -> dict:
        cfg = self.work / f"{section}.config.json"
        result = self.work / f"{section}.result.json"
        ctx = {"section": section, "settings": settings, "result": str(result),
               "device": self.args.device, "threads": self.args.threads,
               "peak_tflops": self.args.peak_tflops, "peak": peak,
               "deadline_seconds": max(5.0, 0.8 * timeout - 10), "scratch": str(self.work),
               "keep_workdir": self.args.keep_workdir}  # fmt: skip
        cfg.write_text(json.dumps(ctx))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
        tail: deque[str] = deque(maxlen=30)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(cfg)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: a timeout ends it and its children
        )  # fmt: skip

        def pump() -> None:
            for line in self.proc.stdout:
                tail.append(line.rstrip())
                print(f"  {section}| {line}", end="", file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            reader.join(5)
            out = json.loads(result.read_text()) if result.is_file() else {}
            return {**out, "status": "failed", "error": f"timed out after {timeout:.0f} s "
                    "(section limit)", "output_tail": "\n".join(tail)}  # fmt: skip
        finally:
            self.proc = None
        reader.join(5)
        if result.is_file():
            out = json.loads(result.read_text())
            if out["status"] != "ok":
                out["output_tail"] = "\n".join(tail)
            return out
        return {"status": "failed", "error": f"section process exited {rc} without a result",
                "output_tail": "\n".join(tail)}  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="gpu_check.json", help="the JSON file (default gpu_check.json)")
    p.add_argument("--budget-seconds", type=float, default=420.0,
                   help="all sections together; each gets a share (default 420)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny settings, every section")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default cuda (cpu with --dry-run)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = every usable core)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak bf16 TFLOP/s for MFU (default: table by device name)")  # fmt: skip
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change one setting, e.g. extract.rows=65536 (VALUE: JSON or string)")  # fmt: skip
    p.add_argument("--workdir", default=None, help="folder for temporary files (default: system)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary files (the dvc repro copy, section logs)")  # fmt: skip
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        sys.exit(child_main(args.child))
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    overrides = parse_set(args.set)
    profile = SETTINGS["dry" if args.dry_run else "gpu"]

    out = Path(args.out)
    start, t_start = now_iso(), time.perf_counter()
    runner = Runner(args)
    report: dict = {
        "check": "gpu_check",
        "dry_run": args.dry_run,
        "device_requested": args.device,
        "budget_seconds": args.budget_seconds,
        "started": start,
        "finished": None,
        "seconds": None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "sections": {s: {"status": "pending"} if s in args.sections else
                     {"status": "skipped", "error": "not in --sections"} for s in SECTIONS},
        "targets": {},
    }  # fmt: skip

    def finish(code: int) -> None:
        report["finished"] = now_iso()
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        report["targets"] = evaluate_targets(report["sections"], args.dry_run)
        report["summary"] = {k: sum(s["status"] == k for s in report["sections"].values())
                             for k in ("ok", "failed", "skipped", "pending")}  # fmt: skip
        write_atomic(out, report)
        if args.keep_workdir:
            log(f"kept the temporary files in {runner.work}")
        else:
            shutil.rmtree(runner.work, ignore_errors=True)
        log(f"wrote {out} ({report['seconds']} s): {report['summary']}")
        sys.exit(code)

    def on_signal(signum, frame) -> None:
        runner.kill()
        if runner.current:
            report["sections"][runner.current] = {
                "status": "failed",
                "error": f"interrupted (signal {signum})",
            }
        finish(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    write_atomic(out, report)
    peak = None
    todo = [s for s in SECTIONS if s in args.sections]
    for i, section in enumerate(todo):
        remaining = args.budget_seconds - (time.perf_counter() - t_start)
        if remaining < MIN_SECONDS:
            report["sections"][section] = {
                "status": "skipped",
                "error": f"budget exhausted ({remaining:.0f} s left)",
            }
            write_atomic(out, report)
            continue
        timeout = section_timeouts(remaining, todo[i:])
        settings = {**profile.get(section, {}), **overrides.get(section, {}),
                    "dry": args.dry_run}  # fmt: skip
        log(f"section {section}: up to {timeout:.0f} s")
        runner.current = section
        t0 = time.perf_counter()
        started_at = round(t0 - t_start, 2)
        res = runner.run_child(section, settings, timeout, peak)
        runner.current = None
        res["started_at_seconds"] = started_at
        res["seconds"] = round(time.perf_counter() - t0, 2)
        res["timeout_seconds"] = round(timeout, 1)
        res.setdefault("error", None)
        res["settings"] = {k: v for k, v in settings.items() if k != "dry"}
        report["sections"][section] = res
        if section == "device" and res["status"] == "ok":
            peak = {"tflops": res["figures"]["peak_tflops"],
                    "source": res["figures"]["peak_source"]}  # fmt: skip
        report["targets"] = evaluate_targets(report["sections"], args.dry_run)
        write_atomic(out, report)
        log(f"section {section}: {res['status']} in {res['seconds']} s"
            + (f" ({res['error'][:200]})" if res["error"] else ""))  # fmt: skip
    failed = any(s["status"] == "failed" for s in report["sections"].values())
    finish(1 if failed else 0)


if __name__ == "__main__":
    main()

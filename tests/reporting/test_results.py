"""`python -m isoprobe results`: the Markdown tables README's Results section shows, from metrics files."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = [0.50, 0.62, 0.55, 0.70, 0.58, 0.66]  # baseline test accuracy, seeds 0-5


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_run(root: Path) -> Path:
    """A run of tweets x {baseline, isobn, whiten, layernorm} x seeds 0-5: isobn is baseline + 0.01 on
    every seed, whiten baseline +/- 0.01 alternately, layernorm has one diverged and one missing run."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"].update(
        methods=["baseline", "isobn", "whiten", "layernorm"], seeds=list(range(6))
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    # test split 45 / 55: a constant prediction scores 0.45 or 0.55 (baseline seed 2: degenerate)
    meta = {"metric": "accuracy", "counts": {"test": {"rows": 100, "labels": {"a": 45, "b": 55}}}}
    write(root / "data/prepared/tweets/meta.json", meta)
    scores = {
        "baseline": BASE,
        "isobn": [b + 0.01 for b in BASE],
        "whiten": [b + (0.01 if s % 2 else -0.01) for s, b in enumerate(BASE)],
        "layernorm": [b + 0.02 for b in BASE],
    }
    for method, values in scores.items():
        for seed, v in enumerate(values):
            m = {"status": "ok", "metric": "accuracy", "test": {"accuracy": v}}
            if method == "layernorm" and seed == 4:
                continue  # missing
            if method == "layernorm" and seed == 5:
                m = {"status": "diverged", "metric": "accuracy", "test": {}, "diverged_at_step": 3}
            write(root / f"metrics/finetune/tweets/{method}/{seed}.json", m)
    iso = {"split": "train", "n_rows": 480, "layer": 6, "isoscore": 0.0769, "mean_cosine": 0.67,
           "std_cv": 0.186, "std_max_median": 1.69, "corr_mean_abs": 0.127, "centring_ratio": 0.818,
           "var_share_top10": 0.0553, "effective_rank": 77.9}  # fmt: skip
    write(root / "metrics/isotropy/tweets/pretrained.json", iso)
    return root


def rows(md: str, first: str) -> dict[str, list[str]]:
    """Table rows of `md` whose first cell is `first`, keyed by their second cell."""
    out = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            out[cells[1]] = cells
    return out


def test_results_tables_from_metrics_files(tmp_path):
    root = make_run(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "isoprobe", "results", "--params", "params.yaml"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    md = res.stdout
    main = {line.split("|")[1].strip(): line
            for line in md.split("Difference to baseline")[0].splitlines() if line.startswith("| ")}  # fmt: skip
    # medians and sample stds of the seeds, written out by hand
    # baseline: median of .50 .55 .58 .62 .66 .70; mean .60167, squared deviations sum .026883 / 5
    assert "0.6000 ± 0.0733" in main["baseline"]
    assert "**0.6100 ± 0.0733**" in main["isobn"]  # best median, bold
    assert "0.6000 ± 0.0830" in main["whiten"]  # .49 .54 .57 .63 .67 .71: sum .034483 / 5
    assert "0.6050 ± 0.0869" in main["layernorm"]  # 4 finished seeds .52 .64 .57 .72: .022675 / 3
    assert "Runs: 24 expected, 22 ok, 1 diverged, 1 missing." in md
    diff = rows(md, "tweets")
    # isobn: +0.01 on all 6 seeds, only the observed pattern and its mirror: p = 2/64
    assert diff["isobn"][2:6] == ["6", "+0.0100", "+0.0100", "0.0312"]
    assert diff["whiten"][3] == "+0.0000" and diff["whiten"][5] == "1"
    assert diff["whiten"][-1] == "no significant difference"
    assert diff["layernorm"][2] == "4" and diff["layernorm"][-1] == "too few seeds (p >= 0.125)"
    assert "baseline" not in diff
    # Holm over the 3 comparisons: p sorted 2/64 (isobn), 2/16 (layernorm, 4 seeds), 1 (whiten):
    # 3 x 0.03125 = 0.09375; max(0.09375, 2 x 0.125) = 0.25; 1
    assert "p (Holm, 3 tests)" in md
    assert [diff[m][6] for m in ("isobn", "layernorm", "whiten")] == ["0.0938", "0.25", "1"]
    assert diff["isobn"][-1] == "not after Holm's correction"  # p = 0.031 alone, 0.094 adjusted
    assert [diff[m][8] for m in ("isobn", "whiten", "layernorm")] == ["0/6", "0/6", "0/4"]
    degenerate = {line.split("|")[1].strip(): line.split("|")[2].strip()
                  for line in md.split("Degenerate runs")[1].splitlines() if line.startswith("| ")}  # fmt: skip
    assert degenerate["baseline"] == "1/6"  # seed 2 scored 0.55, the majority share
    iso = rows(md, "tweets")["train"]  # the isotropy row: task, split, rows, layer, IsoScore, ...
    assert iso[2:5] == ["480", "6", "0.0769"] and iso[-1] == "77.9"


def test_results_of_a_missing_run_say_so(tmp_path):
    root = make_run(tmp_path)
    (root / "metrics/isotropy/tweets/pretrained.json").unlink()
    for p in (root / "metrics/finetune").rglob("*.json"):
        p.unlink()
    res = subprocess.run(
        [sys.executable, "-m", "isoprobe", "results"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "Runs: 24 expected, 0 ok, 24 missing." in res.stdout
    assert "| tweets | missing |" in res.stdout


def probe_layer(layer: int, acc: float, clusters: int, cka: float | None = None) -> dict:
    out = {
        "layer": layer,
        "linear": {"train": 1.0, "test": acc},
        "mlp": {"train": 1.0, "test": acc + 0.01},
        "directprobe": {"train": {"clusters": clusters, "min_distance": 0.5},
                        "test": {"clusters": clusters}, "test_accuracy": acc - 0.1,
                        "similarity_train_test": 0.9},
    }  # fmt: skip
    if cka is not None:
        out["cka_to_pretrained"] = cka
    return out


def test_results_probing_tables_take_medians_over_seeds(tmp_path):
    root = make_run(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(methods=["baseline"], seeds=[0, 1, 2])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write(root / "metrics/probe/tweets/pretrained.json",
          {"layers": [probe_layer(0, 0.4, 0), probe_layer(1, 0.6, 3)]})  # fmt: skip
    for seed, (acc, clusters, cka) in enumerate([(0.7, 3, 0.9), (0.8, 5, 0.5), (0.75, 4, 0.7)]):
        write(root / f"metrics/probe/tweets/baseline/{seed}.json",
              {"layers": [probe_layer(0, 0.4, 0, 1.0), probe_layer(1, acc, clusters, cka)]})  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "isoprobe", "results"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    md = res.stdout.split("### Probing by layer")[1]
    pre, base = md.split("tweets ([CLS]), baseline (3 runs, medians):")
    assert "tweets ([CLS]), pre-trained (1 run, medians):" in pre
    assert "| 1 | 0.6 | 0.61 | 3 | 0.5 | 0.5 |" in pre
    # medians over the 3 seeds: accuracy .75, mlp .76, clusters 4, DirectProbe .65, CKA .7
    assert "| 1 | 0.75 | 0.76 | 4 | 0.5 | 0.65 | 0.7 |" in base


def test_results_of_a_regression_task_compare_the_pearson_spearman_mean(tmp_path):
    """STS-B-like runs: the metric is "correlation", the test scores are pearson, spearman, their
    mean and the MSE; methods are compared on the mean (GLUE's STS-B score)."""
    root = make_run(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(methods=["baseline", "isobn"], seeds=list(range(6)))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write(root / "data/prepared/tweets/meta.json", {"metric": "correlation"})
    for method, shift in (("baseline", 0.0), ("isobn", 0.02)):
        for seed, b in enumerate(BASE):
            p, s = b + shift + 0.01, b + shift - 0.01  # mean: b + shift
            test = {"pearson": p, "spearman": s, "pearson_spearman": (p + s) / 2, "mse": 9.0}
            write(root / f"metrics/finetune/tweets/{method}/{seed}.json",
                  {"status": "ok", "metric": "correlation", "test": test})  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "isoprobe", "results"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    md = res.stdout
    assert "tweets (pearson_spearman)" in md
    main = {line.split("|")[1].strip(): line
            for line in md.split("Difference to baseline")[0].splitlines() if line.startswith("| ")}  # fmt: skip
    assert "0.6000 ± 0.0733" in main["baseline"]
    assert "**0.6200 ± 0.0733**" in main["isobn"]
    diff = rows(md, "tweets")
    assert diff["isobn"][2:6] == ["6", "+0.0200", "+0.0200", "0.0312"]
    assert "Runs: 12 expected, 12 ok." in md

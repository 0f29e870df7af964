"""The report builder on metrics files written here: two tasks, three methods, six seeds, one
diverged run. Every section is present, the numbers in the HTML are the inputs', the page parses,
and its figures are embedded."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from isoprobe.reporting.reading import ReportInputs
from isoprobe.reporting.report import build

TASKS = ["alpha", "beta"]
METHODS = ["baseline", "isobn", "whiten"]
SEEDS = [0, 1, 2, 3, 4, 5]
LAYERS = 3
PNG = b"\x89PNG\r\n\x1a\n"


def score(task: str, method: str, seed: int) -> float:
    """Test accuracy of a run: isobn beats baseline on every seed of alpha, whiten does not."""
    base = {"alpha": 0.70, "beta": 0.80}[task] + 0.01 * ((seed * 7) % 5)
    return round(
        base
        + {"baseline": 0.0, "isobn": 0.02 + 0.001 * seed, "whiten": -0.005 * (-1) ** seed}[method],
        6,
    )


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")


def png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def iso_layers(shift: float) -> list[dict]:
    return [
        {"layer": i, "isoscore": 0.1 * i + shift, "mean_cosine": 0.5 - 0.1 * i, "std_cv": 0.2}
        for i in range(LAYERS)
    ]


def probe_layers(shift: float, post: bool) -> list[dict]:
    out = []
    for i in range(LAYERS):
        lay = {
            "layer": i,
            "linear": {"train": 0.9, "test": 0.6 + 0.05 * i + shift},
            "mlp": {"train": 0.95, "test": 0.62 + 0.05 * i + shift},
            "directprobe": {
                "train": {"clusters": 4 - min(i, 2), "min_distance": 0.1 * i, "conflicting_rows": 2 if i == 0 else 0,
                          "undecided_pairs": 0},
                "test": {"clusters": 3},
                "test_accuracy": 0.5 + 0.1 * i,
                "similarity_train_test": 0.8,
            },
        }  # fmt: skip
        if post:
            lay |= {"cka_to_pretrained": 1.0 - 0.1 * i, "similarity_to_pretrained": 0.9}
        out.append(lay)
    return out


def make_tree(root: Path) -> Path:
    """The metrics and plot files of a run under `root`: TASKS x METHODS x SEEDS, beta/whiten/5
    diverged, alpha probed."""
    for task in TASKS:
        write(root / f"data/prepared/{task}/meta.json", {
            "task": task, "source": f"glue_tsv:{task}", "kind": "sentence", "metric": "accuracy",
            "label_type": "classification", "label_names": ["a", "b"],
            "counts": {s: {"rows": n} for s, n in (("train", 100), ("dev", 20), ("test", 40))},
            "dropped": {"duplicate": 3, "empty_text": 0},
        })  # fmt: skip
        write(
            root / f"metrics/isotropy/{task}/pretrained.json",
            {"layers": iso_layers(0.0), **iso_layers(0.0)[-1], "mlflow_run_id": f"iso-{task}"},
        )
        for name in ("std_hist", "corr_heatmap"):
            png(root / f"plots/isotropy/{task}/pretrained/{name}.png")
        for m in METHODS:
            for s in SEEDS:
                diverged = task == "beta" and m == "whiten" and s == 5
                write(root / f"metrics/finetune/{task}/{m}/{s}.json", {
                    "task": task, "method": m, "seed": s, "metric": "accuracy",
                    "status": "diverged" if diverged else "ok", "diverged_at_step": 17 if diverged else None,
                    "dev": {"accuracy": 0.5}, "test": {"accuracy": score(task, m, s)},
                    "device": "cpu", "threads": 2, "processes": 1, "mlflow_run_id": f"run-{task}-{m}-{s}",
                })  # fmt: skip
                grads = "\n".join(
                    f"{k},1,0.5,0.0001,{(1 + k) * (10 if m == 'baseline' else 1)},1,1"
                    for k in range(1, 6)
                )
                write(
                    root / f"plots/finetune/{task}/{m}/{s}.csv",
                    "step,epoch,loss,lr,grad_cls,grad_head,grad_total\n" + grads,
                )
                write(root / f"metrics/isotropy/{task}/{m}/{s}.json", {
                    "layers": iso_layers(0.05 * (1 + METHODS.index(m))), **iso_layers(0.05)[-1],
                    "head_input": {"isoscore": 0.9 if m != "baseline" else 0.2},
                })  # fmt: skip
    write(
        root / "metrics/probe/alpha/pretrained.json",
        {"encoder": "pretrained", "layers": probe_layers(0.0, False), "mlflow_run_id": "probe-pre"},
    )
    for m in METHODS:
        for s in SEEDS:
            write(
                root / f"metrics/probe/alpha/{m}/{s}.json",
                {"encoder": f"{m}/{s}", "layers": probe_layers(0.01 * s, True)},
            )
    for name in ("accuracy", "clusters", "distance", "similarity", "centroids_pca"):
        png(root / f"plots/probe_summary/alpha/{name}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report"
    inp = ReportInputs(
        root=tree, model="tiny-bert", tasks=TASKS, finetune_tasks=TASKS, methods=METHODS, seeds=SEEDS,
        probe_tasks=["alpha"], token_tasks=[], hyper={"finetune.train": {"lr": 2e-5}}, n_boot=2000,
    )  # fmt: skip
    numbers = build(inp, out)
    return out, numbers, (out / "index.html").read_text(encoding="utf-8")


class Tree(HTMLParser):
    """Checks that every non-void element is closed in order; collects tables' cell text."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tables, self.images, self._cell = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parsed(html: str) -> Tree:
    t = Tree()
    t.feed(html)
    t.close()
    return t


def test_every_section_is_there_and_the_page_parses(built):
    out, _, html = built
    t = parsed(html)
    assert not t.errors and not t.stack
    for anchor in (
        "setup",
        "isotropy",
        "results",
        "gradients",
        "isotropy-after",
        "probing",
        "failures",
        "mlflow",
    ):
        assert f'<section id="{anchor}">' in html and f'href="#{anchor}"' in html
    assert "tiny-bert" in html and "Provenance" in html and "Hyper-parameters" in html
    assert (out / "summary.md").is_file()


def test_figures_are_embedded_pngs(built):
    out, _, html = built
    images = parsed(html).images
    assert len(images) >= 2 * 2 + 2 * 3 + 5  # isotropy, per-task report figures, probe summary
    for img in images:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG)
    assert 'src="http' not in html and "<link" not in html  # nothing fetched: readable offline
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        f"{k}_{t}.png" for k in ("scores", "grad_cls", "isoscore") for t in TASKS
    )


def test_results_table_shows_the_inputs(built):
    _, numbers, html = built
    table = next(
        tb for tb in parsed(html).tables if tb[0][0] == "method" and tb[0][-1] == "average"
    )
    by_method = {row[0]: row for row in table[1:]}
    for j, task in enumerate(TASKS, start=1):
        for m in METHODS:
            seeds = [s for s in SEEDS if not (task == "beta" and m == "whiten" and s == 5)]
            v = np.array([score(task, m, s) for s in seeds])
            median = float(np.median(v))
            std = float(np.sqrt(((v - v.mean()) ** 2).sum() / (len(v) - 1)))
            assert by_method[m][j] == f"{median:.4f} ± {std:.4f}", (task, m)
            assert numbers["results"][task][m]["n"] == len(seeds)
    assert numbers["results"]["alpha"]["isobn"]["vs_baseline"]["p_value"] == pytest.approx(2 / 64)
    assert numbers["results"]["alpha"]["isobn"]["vs_baseline"]["significant"]
    # Holm over 4 comparisons (isobn and whiten on alpha and beta): isobn's p = 2/64 twice, the
    # smallest: 4 x 1/32 = 0.125, then max(0.125, 3 x 1/32): not significant after correction
    for task in TASKS:
        cmp = numbers["results"][task]["isobn"]["vs_baseline"]
        assert cmp["p_adjusted"] == pytest.approx(0.125) and cmp["family"] == 4
        assert not cmp["significant_adjusted"]
    detail = next(tb for tb in parsed(html).tables if tb[0][:3] == ["task", "method", "seeds"])
    row = next(r for r in detail if r[:2] == ["alpha", "isobn"])
    assert row[10] == "0.125" and row[-1] == "not after Holm's correction"
    assert row[-2] == "n/a"  # meta.json has no label counts: degenerate runs cannot be told
    # the best median per task and the best average are marked
    assert re.search(r'<td class="best">[^<]*</td>', html)
    best = re.findall(
        r'<tr><td class="l">(\w+)</td>(?:<td[^>]*>[^<]*</td>)*?<td class="best">', html
    )
    assert "isobn" in best and "whiten" not in best


def test_too_few_seeds_are_said_plainly(tree, tmp_path):
    inp = ReportInputs(root=tree, model="m", tasks=TASKS, finetune_tasks=TASKS, methods=METHODS, seeds=[0, 1],
                       probe_tasks=[], token_tasks=[], hyper={})  # fmt: skip
    build(inp, tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()
    assert (
        "too few seeds" in md.lower()
        and "too few seeds" in (tmp_path / "r" / "index.html").read_text().lower()
    )
    assert (
        "probing" not in (tmp_path / "r" / "index.html").read_text()
    )  # no probe tasks: no section


def test_failures_and_skips_are_listed(built):
    out, numbers, html = built
    assert numbers["failures"]["runs"] == 1
    failures = html[html.index('<section id="failures">') :]
    assert re.search(
        r"<td[^>]*>beta</td><td[^>]*>whiten</td><td[^>]*>5</td><td[^>]*>diverged</td><td[^>]*>17</td>",
        failures,
    )
    assert re.search(r"<td[^>]*>alpha</td><td[^>]*>duplicate</td><td[^>]*>3</td>", failures)
    assert "identical vectors, different labels" in failures  # DirectProbe conflicts, layer 0
    md = (out / "summary.md").read_text()
    assert "beta/whiten/seed 5: diverged at step 17" in md


def test_gradient_and_isotropy_after_tables(built):
    _, _, html = built
    tables = parsed(html).tables
    grad = next(tb for tb in tables if tb[0][:2] == ["method", "steps"])
    rows = {r[0]: r for r in grad[1:]}
    assert (
        rows["baseline"][1] == str(len(SEEDS) * 5) and float(rows["baseline"][-1]) == 60.0
    )  # (1 + 5) * 10
    assert float(rows["isobn"][-1]) == 6.0
    after = next(tb for tb in tables if tb[0][:2] == ["encoder", "vectors"])
    col = after[0].index("isoscore")
    rows = {(r[0], r[1]): r for r in after[1:]}
    assert float(rows["pre-trained", "last layer"][col]) == pytest.approx(0.2)
    assert float(rows["isobn", "head input"][col]) == 0.9
    assert float(rows["isobn", "last layer"][col]) == pytest.approx(0.25)  # median over seeds
    probe = next(tb for tb in tables if tb[0][0] == "layer" and "cka_to_pretrained" in tb[0])
    assert probe[1][0] == "0"


def test_uncommitted_changes_means_code_or_params_not_outputs(tree, tmp_path):
    """DVC rewrites metrics during every run, so only code and params make a tree "uncommitted"."""
    import shutil
    import subprocess

    root = tmp_path / "repo"
    shutil.copytree(tree, root)
    (root / "params.yaml").write_text("seed: 0\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "run"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)
    inp = ReportInputs(root=root, model="m", tasks=TASKS, finetune_tasks=TASKS, methods=METHODS,
                       seeds=SEEDS, probe_tasks=[], token_tasks=[], hyper={})  # fmt: skip

    def commit_row(out: Path) -> str:
        rows = [r for t in parsed((out / "index.html").read_text()).tables for r in t]
        return next(r[1] for r in rows if r and r[0] == "git commit")

    metrics = next(p for p in (root / "metrics").rglob("*.json"))
    metrics.write_text(metrics.read_text() + "\n")  # an output rewritten by the run
    build(inp, tmp_path / "a")
    assert "uncommitted" not in commit_row(tmp_path / "a")
    (root / "params.yaml").write_text("seed: 1\n")
    build(inp, tmp_path / "b")
    assert "(uncommitted changes to code or params)" in commit_row(tmp_path / "b")

"""The one reader of a run's files (`reporting.reading`) on the report tests' synthetic tree: typed
runs per task/method/seed, skipped outputs set apart, missing files counted, an unreadable file a
clear error; `isoprobe results` shows the report's numbers without building the report."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_report import METHODS, SEEDS, TASKS, make_tree, score, write

from isoprobe.core.errors import IsoprobeError
from isoprobe.reporting.numbers import finetune_results
from isoprobe.reporting.reading import ReportInputs, RunFiles, Skip
from isoprobe.reporting.report import build
from isoprobe.reporting.results import results_markdown


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"))


def inputs(root, **kw) -> ReportInputs:
    base = dict(root=root, model="tiny-bert", tasks=TASKS, finetune_tasks=TASKS, methods=METHODS,
                seeds=SEEDS, probe_tasks=["alpha"], token_tasks=[], hyper={}, n_boot=500)  # fmt: skip
    return ReportInputs(**(base | kw))


def test_finetune_runs_are_typed_per_task_method_seed(tree):
    run = RunFiles(inputs(tree))
    assert list(run.finetune) == [(t, m) for t in TASKS for m in METHODS]
    bad = run.finetune["beta", "whiten"][5]
    assert (bad.status, bad.finished, bad.score, bad.grad_cls()) == ("diverged", False, None, [])
    ok = run.finetune["alpha", "isobn"][3]
    assert ok.score == score("alpha", "isobn", 3) and ok.device == "cpu x1 (2 threads)"
    assert ok.grad_cls() == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert run.meta("alpha").metric == "accuracy" and run.meta("nowhere").metric == "score"
    assert [(d.task, d.reason, d.rows) for d in run.dropped] == [
        ("alpha", "duplicate", 3),
        ("beta", "duplicate", 3),
    ]
    assert run.pretrained["alpha"].layers[0]["layer"] == 0 and run.skips == []


def test_skipped_outputs_are_set_apart_once_and_missing_ones_counted(tree, tmp_path):
    root = tmp_path / "t"
    write(root / "metrics/isotropy/alpha/isobn/1.json", {"status": "skipped", "reason": "r"})
    skip = {"status": "skipped", "reason": "r", "stage": "probe_post"}
    write(root / "metrics/probe/alpha/isobn/1.json", skip)
    write(root / "metrics/probe/alpha/isobn/0.json", {"encoder": "isobn/0", "layers": []})
    run = RunFiles(inputs(root, methods=["isobn"], seeds=[0, 1]))
    assert run.skips == [Skip("embed_post", "alpha", "isobn", 1, "r"),
                         Skip("probe_post", "alpha", "isobn", 1, "r")]  # fmt: skip
    assert run.finetuned_isotropy["alpha", "isobn"].runs == []
    pre, isobn = run.probe_groups["alpha"]
    assert (pre.name, pre.missing, pre.runs) == ("pre-trained", 1, [])
    assert (isobn.name, isobn.missing, [r.encoder for r in isobn.runs]) == ("isobn", 0, ["isobn/0"])


def test_an_unreadable_metrics_file_is_a_clear_error(tmp_path):
    write(tmp_path / "metrics/finetune/alpha/baseline/0.json", "{not json")
    run = RunFiles(inputs(tmp_path, tasks=["alpha"], finetune_tasks=["alpha"], methods=["baseline"], seeds=[0]))  # fmt: skip
    with pytest.raises(
        IsoprobeError, match=r"cannot read .*metrics/finetune/alpha/baseline/0\.json"
    ):
        run.finetune_runs()


def test_results_show_the_reports_numbers(tree, tmp_path):
    inp = inputs(tree)
    numbers = build(inp, tmp_path / "report")
    assert finetune_results(RunFiles(inp)).numbers() == numbers["results"]
    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    table = summary.split("## Fine-tuning results (test, median ± std over seeds)\n\n")[1]
    table = table.split("\n\n")[0]
    assert table.startswith("| method |") and table in results_markdown(inp)


def test_results_build_no_report():
    code = (
        "import sys; import isoprobe.reporting.results; "
        "print('isoprobe.reporting.report' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

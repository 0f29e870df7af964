"""Params schema: the repository's params.yaml is valid; bad params name the key and stop."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from isoprobe.core.config import load_params, parse_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.treatments import BUILTIN_METHODS, treatment_names

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.pipeline.tasks == ["tweets"]
    assert p.model.name == "embedded:all-MiniLM-L6-v2"
    assert p.tasks["tweets"].scheme == "embedded" and p.tasks["rte"].argument.endswith("glue/RTE")


def test_heads_options_come_from_the_treatment_registry():
    """Unset treatments and options take their options model's defaults (the only defaults); the
    repository's params.yaml spells out exactly those; every registered treatment is present."""
    spelled = parse_params(BASE).finetune.heads
    unset = parse_params(with_change("finetune.heads", KeyError)).finetune
    assert unset.heads.model_dump(mode="json") == spelled.model_dump(mode="json")
    assert list(unset.heads.model_dump()) == list(treatment_names())
    assert unset.methods == list(BUILTIN_METHODS)
    partial = parse_params(with_change("finetune.heads", {"isobn": {"beta": 1.0}})).finetune.heads
    assert partial.options("isobn") == {"momentum": 0.05, "beta": 1.0, "eps": 1e-3}
    assert partial["whiten"].shrinkage == 0.1 and partial.options("baseline") == {}


def with_change(path: str, value):
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for k in parents:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "tasks.tweets.source",
            "ftp:somewhere",
            r"tasks\.tweets\.source: unknown source scheme 'ftp'",
        ),
        ("tasks.tweets.source", "tweets", r"tasks\.tweets\.source: expected '<scheme>:<argument>'"),
        (
            "tasks.tweets.source",
            "embedded:reviews",
            r"tasks\.tweets\.source: unknown embedded source 'reviews'",
        ),
        (
            "tasks.tweets.max_rows.dev",
            0,
            r"tasks\.tweets\.max_rows\.dev: .*greater than or equal to 1",
        ),
        ("tasks.tweets.split.dev", 0.95, r"tasks\.tweets\.split: .*dev \+ test must be < 1"),
        (
            "tasks.tweets.label_type",
            "ordinal",
            r"tasks\.tweets\.label_type: .*'classification' or 'regression'",
        ),
        ("tasks.tweets.invalid_rows", "skip", r"tasks\.tweets\.invalid_rows"),
        ("tasks.tweets.labels", ["a", "a"], r"tasks\.tweets\.labels: labels must be unique"),
        ("tasks.tweets.colour", "red", r"tasks\.tweets\.colour: unknown key"),
        ("pipeline.tasks", ["tweets", "nope"], r"pipeline\.tasks names \['nope'\] not defined"),
        ("pipeline.tasks", [], r"pipeline\.tasks: .*at least 1"),
        ("pipeline.tasks", ["tweets", "tweets"], r"pipeline\.tasks: task names must be unique"),
        ("embed.batch_size", 0, r"embed\.batch_size: .*greater than or equal to 1"),
        ("embed.dtype", "int8", r"embed\.dtype"),
        ("embed.device", "tpu", r"embed\.device"),
        ("isotropy.split", "validation", r"isotropy\.split"),
        ("isotropy.top_k", [0, 5], r"isotropy\.top_k: top_k must be distinct integers >= 1"),
        ("tracking.enabled", "maybe", r"tracking\.enabled"),
        ("modle", {"name": "x"}, r"modle: unknown key"),
        (
            "finetune.methods",
            ["baseline", "dropnorm"],
            r"finetune\.methods\.1: not a registered treatment; registered: 'baseline', "
            r"'layernorm', 'batchnorm', 'standardize', 'isobn', 'whiten' .*\(got 'dropnorm'\)",
        ),
        ("finetune.methods", ["isobn", "isobn"], r"finetune\.methods: entries must be unique"),
        ("finetune.train.lr", -1e-5, r"finetune\.train\.lr: Input should be greater than 0"),
        (
            "finetune.train.batch_size",
            0,
            r"finetune\.train\.batch_size: .*greater than or equal to 2",
        ),
        ("finetune.train.dropout", 1.0, r"finetune\.train\.dropout: Input should be less than 1"),
        ("finetune.train.pooling", "max", r"finetune\.train\.pooling"),
        ("finetune.seeds", [0, "one"], r"finetune\.seeds: seeds must be integers, got 'one'"),
        ("finetune.seeds", [0, 1.5], r"finetune\.seeds: seeds must be integers, got 1\.5"),
        ("finetune.seeds", [], r"finetune\.seeds"),
        ("finetune.launcher", "python; rm -rf ~", r"finetune\.launcher: String should match"),
        ("finetune.launcher", "bash -c", r"finetune\.launcher: String should match"),
        (
            "finetune.tasks",
            ["sst2"],
            r"finetune\.tasks names \['sst2'\] that pipeline\.tasks does not prepare",
        ),
        (
            "finetune.heads.isobn.momentum",
            0,
            r"finetune\.heads\.isobn\.momentum: Input should be greater than 0",
        ),
        (
            "finetune.heads.isobn.momentum",
            1.5,
            r"finetune\.heads\.isobn\.momentum: Input should be less than or equal to 1",
        ),
        (
            "finetune.heads.baseline",
            {"eps": 1},
            r"finetune\.heads\.baseline: baseline takes no options",
        ),
        (
            "finetune.heads.groupnorm",
            {"groups": 4},
            r"finetune\.heads\.groupnorm: not a registered treatment; registered: 'baseline'",
        ),
        ("finetune.heads.isobn.gamma", 1.0, r"finetune\.heads\.isobn\.gamma: unknown key"),
        ("finetune.heads.whiten.shrinkage", 2, r"finetune\.heads\.whiten\.shrinkage: .*(got 2)"),
        (
            "finetune.heads.layernorm.eps",
            0,
            r"finetune\.heads\.layernorm\.eps: Input should be greater than 0 \(got 0\)",
        ),
        (
            "finetune.heads.standardize",
            [0.1],
            r"finetune\.heads\.standardize: Input should be a valid dictionary",
        ),
        ("pipeline", KeyError, r"pipeline: Field required"),
        (
            "probe.tasks",
            ["rte"],
            r"probe\.tasks names \['rte'\] that finetune\.tasks does not fine-tune",
        ),
        ("probe.tasks", ["tweets", "tweets"], r"probe\.tasks: entries must be unique"),
        (
            "probe.token_tasks",
            ["tweets"],
            r"probe\.token_tasks: \['tweets'\] must be token-level \(conllu\) tasks",
        ),
        (
            "probe.token_tasks",
            ["pos"],
            r"probe\.token_tasks: \['pos'\] must be .* listed in pipeline\.tasks",
        ),
        ("probe.features", "max", r"probe\.features: Input should be 'cls' or 'mean'"),
        ("report.alpha", 1.5, r"report\.alpha: Input should be less than 1"),
        ("report.n_boot", 10, r"report\.n_boot: Input should be greater than or equal to 100"),
        ("probe.layers", [1, 1], r"probe\.layers: entries must be unique"),
        (
            "probe.linear.c_grid",
            [1.0, -1.0],
            r"probe\.linear\.c_grid: c_grid must hold distinct values > 0",
        ),
        ("probe.linear.c_grid", [], r"probe\.linear\.c_grid: .*at least 1"),
        ("probe.mlp.hidden_grid", [[0, 8]], r"probe\.mlp\.hidden_grid: .*sizes >= 1"),
        ("probe.mlp.hidden_grid", [[8]], r"probe\.mlp\.hidden_grid\.0"),
        (
            "probe.mlp.l2_grid",
            [-0.1],
            r"probe\.mlp\.l2_grid: l2_grid must hold distinct values >= 0",
        ),
        ("probe.mlp.lr", 0, r"probe\.mlp\.lr: Input should be greater than 0"),
        (
            "probe.directprobe.max_rows",
            1,
            r"probe\.directprobe\.max_rows: .*greater than or equal to 2",
        ),
        ("probe.directprobe.method", "svm", r"probe\.directprobe\.method: unknown key"),
    ],
)
def test_bad_params_name_the_key(path, value, expected):
    with pytest.raises(IsoprobeError, match=expected):
        parse_params(with_change(path, value), "params.yaml")


def test_bad_task_name():
    data = copy.deepcopy(BASE)
    data["tasks"]["bad/name"] = data["tasks"]["tweets"]
    with pytest.raises(IsoprobeError, match="task name 'bad/name'"):
        parse_params(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(IsoprobeError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(IsoprobeError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(IsoprobeError, match="expected a mapping"):
        load_params(bad)


def test_check_command_exit_codes(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "isoprobe", "check", "--params", str(REPO / "params.yaml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(with_change("embed.batch_size", -3)))
    res = subprocess.run(
        [sys.executable, "-m", "isoprobe", "check", "--params", str(bad)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "embed.batch_size" in res.stderr and "-3" in res.stderr


def test_finetune_tasks_default_to_the_sentence_tasks_of_the_pipeline():
    pud = next(n for n, t in BASE["tasks"].items() if t["source"].startswith("conllu:"))
    data = with_change("finetune.tasks", KeyError)
    data["pipeline"]["tasks"] = ["rte", pud, "tweets"]
    assert parse_params(data).finetune.tasks == ["rte", "tweets"]
    data["pipeline"]["tasks"] = [pud]
    with pytest.raises(IsoprobeError, match=r"finetune\.tasks: not set, .* no sentence task"):
        parse_params(data)
    explicit = with_change("finetune.tasks", ["tweets"])
    explicit["pipeline"]["tasks"] = ["rte", "tweets"]
    assert parse_params(explicit).finetune.tasks == ["tweets"]


def test_probe_section_defaults_to_the_finetune_tasks():
    data = with_change("probe", KeyError)
    assert parse_params(data).probe.tasks == ["tweets"]
    pud = next(n for n, t in BASE["tasks"].items() if t["source"].startswith("conllu:"))
    data["pipeline"]["tasks"] = ["tweets", pud]
    data["probe"] = {"tasks": [], "token_tasks": [pud]}
    p = parse_params(data)
    assert p.probe.tasks == [] and p.probe.token_tasks == [pud] and p.probe.layers is None

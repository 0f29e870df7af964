"""Params profiles become `dvc exp run -S` arguments that only change existing keys and validate."""

from __future__ import annotations

import subprocess
import sys

import yaml

from conftest import REPO
from isoprobe.core.profiles import apply_overrides, flatten, load_profile, set_args


def test_flatten_and_set_args():
    overrides = {"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}
    assert flatten(overrides) == {"a.b": 1, "a.c": [1, 2], "d": None, "e": {}}
    assert set_args({"a": {"c": ["x", "y"]}, "d": None}) == ["-S", 'a.c=["x","y"]', "-S", "d=null"]
    # Each value reads back as YAML to what the profile says (DVC parses -S values as YAML).
    for arg in set_args(overrides)[1::2]:
        key, _, value = arg.partition("=")
        assert yaml.safe_load(value) == flatten(overrides)[key]


def overrides_of(name: str) -> dict:
    """A profile's overrides, checked to name only keys params.yaml has (-S must not add keys)."""
    overrides = load_profile(REPO / "profiles" / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in flatten(overrides):
        node = params
        for part in key.split("."):
            assert part in node, f"{key} is not in params.yaml: -S would add a key"
            node = node[part]
    return overrides


def test_isobn_glue_profile_overrides_existing_keys_and_validates():
    overrides = overrides_of("isobn_glue.yaml")
    merged = apply_overrides(REPO / "params.yaml", overrides)
    t = merged.finetune.train
    assert (t.lr, t.batch_size, t.max_length, t.epochs, t.warmup_ratio) == (5e-5, 16, 256, 10, 0.06)
    assert merged.finetune.seeds == [1, 2, 3, 4, 5] and merged.finetune.methods == [
        "baseline",
        "isobn",
    ]
    assert all(
        merged.tasks[n].source.startswith("glue_tsv:../shared/data/glue/")
        for n in merged.finetune.tasks
    )


def test_closer_look_profile_probes_trec_and_pos_through_the_finetuned_encoders():
    merged = apply_overrides(REPO / "params.yaml", overrides_of("closer_look.yaml"))
    assert merged.finetune.tasks == merged.probe.tasks == ["trec_fine"]
    assert merged.tasks["trec_fine"].granularity == "fine"
    assert merged.probe.token_tasks == ["pos"]
    assert merged.tasks["pos"].source.startswith("conllu:../shared/data/ud/")
    glue = apply_overrides(REPO / "params.yaml", overrides_of("isobn_glue.yaml"))
    assert glue.probe.token_tasks == ["pos"] and "stsb" not in glue.probe.tasks


def test_set_args_command():
    res = subprocess.run(
        [sys.executable, "-m", "isoprobe", "set-args", "profiles/isobn_glue.yaml"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = res.stdout.splitlines()
    assert lines[0] == "-S" and "finetune.train.lr=5e-05" in lines


def test_set_args_overrides_a_profile_value():
    """--set wins over the profile's own value (appending -S after xargs' arguments would not: the
    profile's later -S wins in dvc), and is validated like the rest."""

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "isoprobe", "set-args", "profiles/closer_look.yaml", *extra],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip

    res = run("--set", "model.name=embedded:all-MiniLM-L6-v2", "--set", "finetune.seeds=[7]")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert 'model.name="embedded:all-MiniLM-L6-v2"' in lines and "finetune.seeds=[7]" in lines
    assert not any("bert-base-cased" in line for line in lines)
    assert 'finetune.tasks=["trec_fine"]' in lines  # the rest of the profile is kept
    bad = run("--set", "finetune.train.lr=-1")
    assert bad.returncode == 2 and "finetune.train.lr" in bad.stderr and not bad.stdout
    bad = run("--set", "model.name")
    assert bad.returncode == 2 and "expected KEY.PATH=VALUE" in bad.stderr and not bad.stdout


def test_glue_cpu_profile_is_the_readme_results_setting():
    """The README's Results come from this profile: every method, 5 seeds, 800 training rows of the
    four GLUE tasks, fine-tuning and pre-trained isotropy only (nothing probed)."""
    merged = apply_overrides(REPO / "params.yaml", overrides_of("glue_cpu.yaml"))
    assert merged.finetune.tasks == merged.pipeline.tasks == ["sst2", "stsb", "cola", "rte"]
    assert merged.finetune.methods == ["baseline", "layernorm", "batchnorm", "standardize", "isobn", "whiten"]  # fmt: skip
    assert merged.finetune.seeds == [1, 2, 3, 4, 5]
    assert (merged.finetune.train.epochs, merged.finetune.train.max_length) == (3, 128)
    for task in merged.finetune.tasks:
        rows = merged.tasks[task].max_rows
        assert (rows.train, rows.dev, rows.test) == (800, 200, None), task
        assert merged.tasks[task].source.startswith("glue_tsv:../shared/data/glue/")
    assert merged.probe.tasks == merged.probe.token_tasks == []

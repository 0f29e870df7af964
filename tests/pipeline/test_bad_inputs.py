"""Bad params and bad data, each through the real entry points (`python -m isoprobe check` and the
stage scripts, as subprocesses in an empty project folder): one `isoprobe: error:` line naming the
key or file and what is allowed, exit code 2, no traceback, and no output file or folder left."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import REPO

STAGES = {
    "prepare": ["t"],
    "embed": ["t"],
    "isotropy": ["t"],
    "finetune": ["t", "baseline", "0"],
    "embed_post": ["t", "baseline", "0"],
    "probe": ["t"],
    "probe_post": ["t", "baseline", "0"],
    "probe_summary": [],
    "report": [],
}
GOOD_ROWS = [
    f"row number {i} says {'yes' if i % 2 else 'no'},{'pos' if i % 2 else 'neg'}" for i in range(60)
]


def base_params() -> dict:
    """A valid params file for one small csv task `t` (data/t.csv, written by `project`)."""
    return {
        "model": {"name": "embedded:all-MiniLM-L6-v2"},
        "pipeline": {"tasks": ["t"]},
        "tasks": {
            "t": {
                "source": "csv:data/t.csv",
                "split": {"dev": 0.2, "test": 0.2},
                "invalid_rows": "fail",
                "seed": 0,
            }
        },
        "finetune": {
            "tasks": ["t"],
            "methods": ["baseline", "isobn"],
            "seeds": [0, 1],
            "train": {"lr": 1e-4, "batch_size": 8, "epochs": 1, "dropout": 0.1},
        },
        "probe": {"tasks": ["t"]},
        "tracking": {"enabled": False},
    }


def project(tmp_path: Path, params: dict | str, files: dict[str, bytes | str]) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    text = params if isinstance(params, str) else yaml.safe_dump(params, sort_keys=False)
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return tmp_path


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


def assert_clean_failure(res: subprocess.CompletedProcess, expected: list[str]) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    errors = [line for line in res.stderr.splitlines() if line.startswith("isoprobe: error:")]
    assert errors, res.stderr[-2000:]
    message = res.stderr[res.stderr.index("isoprobe: error:") :]
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- params


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        *parents, last = path.split(".")
        node = p
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value

    return edit


def _drop(path: str) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        *parents, last = path.split(".")
        node = p
        for k in parents:
            node = node[k]
        del node[last]

    return edit


PARAMS_CASES = {
    "unknown top-level key": (_set("finetuning", {}), ["finetuning: unknown key"]),
    "unknown nested key": (
        _set("finetune.train.lrate", 1e-3),
        ["finetune.train.lrate: unknown key"],
    ),
    "lr zero": (_set("finetune.train.lr", 0), ["finetune.train.lr", "greater than 0", "got 0"]),
    "lr negative": (_set("finetune.train.lr", -1e-5), ["finetune.train.lr", "greater than 0"]),
    "lr not a number": (_set("finetune.train.lr", "fast"), ["finetune.train.lr", "'fast'"]),
    "lr NaN": (_set("finetune.train.lr", float("nan")), ["finetune.train.lr", "finite"]),
    "batch size zero": (
        _set("finetune.train.batch_size", 0),
        ["finetune.train.batch_size", "greater than or equal to 2"],
    ),
    "embed batch size zero": (
        _set("embed.batch_size", 0),
        ["embed.batch_size", "greater than or equal to 1", "got 0"],
    ),
    "dropout one": (_set("finetune.train.dropout", 1.0), ["finetune.train.dropout", "less than 1"]),
    "dropout negative": (
        _set("finetune.train.dropout", -0.1),
        ["finetune.train.dropout", "greater than or equal to 0"],
    ),
    "momentum zero": (
        _set("finetune.heads.isobn", {"momentum": 0}),
        ["finetune.heads.isobn.momentum", "greater than 0"],
    ),
    "momentum above one": (
        _set("finetune.heads.batchnorm", {"momentum": 1.5}),
        ["finetune.heads.batchnorm.momentum", "less than or equal to 1", "got 1.5"],
    ),
    "unknown method": (
        _set("finetune.methods", ["baseline", "groupnorm"]),
        ["finetune.methods.1", "'groupnorm'", "'isobn'", "'whiten'"],
    ),
    "unknown source scheme": (
        _set("tasks.t.source", "ftp:host/data.csv"),
        ["tasks.t.source", "unknown source scheme 'ftp'", "glue_tsv"],
    ),
    "unknown embedded source": (
        _set("tasks.t.source", "embedded:reviews"),
        ["tasks.t.source", "unknown embedded source 'reviews'", "tweets"],
    ),
    "source without argument": (
        _set("tasks.t.source", "csv"),
        ["tasks.t.source", "<scheme>:<argument>"],
    ),
    "unknown pooling": (
        _set("finetune.train.pooling", "max"),
        ["finetune.train.pooling", "'cls'", "'mean'", "got 'max'"],
    ),
    "unknown device": (_set("embed.device", "tpu"), ["embed.device", "'cuda'", "got 'tpu'"]),
    "duplicate seeds": (_set("finetune.seeds", [0, 1, 0]), ["finetune.seeds", "unique"]),
    "seed not an integer": (
        _set("finetune.seeds", [0, "one"]),
        ["finetune.seeds", "integers", "'one'"],
    ),
    "empty methods": (_set("finetune.methods", []), ["finetune.methods", "at least 1"]),
    "empty seeds": (_set("finetune.seeds", []), ["finetune.seeds", "at least 1"]),
    "empty pipeline tasks": (_set("pipeline.tasks", []), ["pipeline.tasks", "at least 1"]),
    "undefined pipeline task": (
        _set("pipeline.tasks", ["t", "sst3"]),
        ["pipeline.tasks names ['sst3'] not defined", "defined: ['t']"],
    ),
    "missing pipeline": (_drop("pipeline"), ["pipeline: Field required"]),
    "split leaves no train": (
        _set("tasks.t.split", {"dev": 0.5, "test": 0.5}),
        ["tasks.t.split", "dev + test must be < 1"],
    ),
    "max_rows zero": (
        _set("tasks.t.max_rows", {"train": 0}),
        ["tasks.t.max_rows.train", "greater than or equal to 1"],
    ),
    "invalid_rows value": (
        _set("tasks.t.invalid_rows", "ignore"),
        ["tasks.t.invalid_rows", "'drop'", "'fail'", "'ignore'"],
    ),
    "invalid_rows unknown reason": (
        _set("tasks.t.invalid_rows", {"typo": "drop"}),
        ["tasks.t.invalid_rows", "unknown reason(s) ['typo']", "leakage"],
    ),
    "tracking.required not a bool": (
        _set("tracking.required", "maybe"),
        ["tracking.required", "valid boolean", "'maybe'"],
    ),
    "report alpha out of range": (_set("report.alpha", 1.5), ["report.alpha", "less than 1"]),
    "probe task not fine-tuned": (
        _set("probe.tasks", ["other"]),
        ["probe.tasks names ['other']", "finetune.tasks"],
    ),
    "launcher with shell syntax": (
        _set("finetune.launcher", "python; rm -rf ~"),
        ["finetune.launcher", "should match pattern"],
    ),
    "bad task name": (
        lambda p: p["tasks"].update({"a/b": {"source": "csv:x.csv"}}),
        ["task name 'a/b' must match"],
    ),
    "dtype": (_set("embed.dtype", "int8"), ["embed.dtype", "'float16'", "got 'int8'"]),
    "negative fine-tuning seed": (
        _set("finetune.seeds", [-1]),
        ["finetune.seeds.0", "greater than or equal to 0", "got -1"],
    ),
    "huge fine-tuning seed": (
        _set("finetune.seeds", [0, 2**40]),
        ["finetune.seeds.1", "less than or equal to 2147483647"],
    ),
    "negative task seed": (
        _set("tasks.t.seed", -1),
        ["tasks.t.seed", "greater than or equal to 0"],
    ),
    "huge probe seed": (_set("probe.seed", 2**32), ["probe.seed", "less than or equal to"]),
    "negative report seed": (_set("report.seed", -5), ["report.seed", "got -5"]),
    "hf_splits on a csv source": (
        _set("tasks.t.hf_splits", {"test": "validation_matched"}),
        ["tasks.t", "hf_splits applies to hf: sources only"],
    ),
    "hf_splits naming one split twice": (
        lambda p: p["tasks"].update(
            {"h": {"source": "hf:glue:mnli", "hf_splits": {"dev": "x", "test": "x"}}}
        ),
        ["tasks.h.hf_splits", "different splits"],
    ),
    "unknown text encoding": (
        _set("tasks.t.encoding", "utf-9"),
        ["tasks.t.encoding", "unknown text encoding 'utf-9'"],
    ),
    "one text column twice": (
        _set("tasks.t.text_columns", ["text", "text"]),
        ["tasks.t.text_columns", "different columns"],
    ),
    "label column among the text columns": (
        lambda p: p["tasks"]["t"].update(text_columns=["text", "label"], label_column="label"),
        ["tasks.t", "label_column 'label' is also one of text_columns"],
    ),
    "no probe layers": (_set("probe.layers", []), ["probe.layers", "at least 1 item"]),
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_bad_params(tmp_path, case):
    edit, expected = PARAMS_CASES[case]
    params = copy.deepcopy(base_params())
    edit(params)
    root = project(tmp_path, params, {"data/t.csv": "text,label\n" + "\n".join(GOOD_ROWS) + "\n"})
    before = files_under(root)
    res = run(root, "-m", "isoprobe", "check", "--params", "params.yaml")
    assert_clean_failure(res, ["params.yaml", *expected])
    # every stage validates the same file first and writes nothing
    res = run(root, str(REPO / "stages/prepare.py"), "t")
    assert_clean_failure(res, expected)
    assert files_under(root) == before


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_validates_params_first(tmp_path, stage):
    params = base_params()
    params["finetune"]["train"]["lr"] = -1
    root = project(tmp_path, params, {"data/t.csv": "text,label\n" + "\n".join(GOOD_ROWS) + "\n"})
    before = files_under(root)
    res = run(root, str(REPO / "stages" / f"{stage}.py"), *STAGES[stage])
    assert_clean_failure(res, ["finetune.train.lr", "greater than 0", "got -1"])
    assert files_under(root) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            yaml.safe_dump(base_params(), sort_keys=False) + "tracking: {enabled: true}\n",
            ["params.yaml: not valid YAML: duplicate key 'tracking' (line", "give each key once"],
        ),
        ("model: [unclosed\n", ["params.yaml: not valid YAML"]),
        ("- a\n- b\n", ["expected a mapping at the top level, got list"]),
        ("", ["expected a mapping at the top level, got NoneType"]),
    ],
)
def test_unreadable_params(tmp_path, text, expected):
    root = project(tmp_path, text, {})
    res = run(root, "-m", "isoprobe", "check")
    assert_clean_failure(res, expected)
    res = run(root, str(REPO / "stages/prepare.py"), "t")
    assert_clean_failure(res, expected)
    assert files_under(root) == {"params.yaml"}


def test_missing_params_file(tmp_path):
    res = run(tmp_path, "-m", "isoprobe", "check", "--params", "nope.yaml")
    assert_clean_failure(res, ["params file not found: nope.yaml"])


# --------------------------------------------------------------------------- data

TABLE = "text,label\n" + "\n".join(GOOD_ROWS) + "\n"


def _csv(extra: str) -> dict[str, bytes | str]:
    return {"data/t.csv": TABLE + extra}


DATA_CASES = {
    "empty text": (
        _csv(",pos\n"),
        None,
        ["1 row(s) with empty text", "t.csv:62", "tasks.t.invalid_rows"],
    ),
    "whitespace text": (_csv('"   \t ",neg\n'), None, ["1 row(s) with empty text", "t.csv:62"]),
    "missing label": (
        _csv("a row without label,\n"),
        None,
        ["1 row(s) with missing label", "t.csv:62"],
    ),
    "NaN label": (_csv("a row with NaN,NaN\n"), None, ["1 row(s) with missing label", "t.csv:62"]),
    "label outside the set": (
        _csv("a row labelled meh,meh\n"),
        {"labels": ["neg", "pos"]},
        ["unknown label", "'meh'", "['neg', 'pos']", "tasks.t.labels"],
    ),
    "wrong column count (quoting)": (
        _csv('an "unquoted, comma" row,pos\n'),
        None,
        ["bad field count", "t.csv:62 has 3 fields, expected 2"],
    ),
    "undecodable bytes": (
        {"data/t.csv": TABLE.encode() + b"caf\xe9 au lait,pos\n"},
        None,
        ["undecodable", "t.csv:62", "not decodable as utf-8", "tasks.t.encoding"],
    ),
    "duplicates": (
        _csv("row number 3 says yes,pos\n"),
        None,
        ["1 row(s) with duplicate", "tasks.t.invalid_rows is 'fail' for duplicate"],
    ),
    "conflicting labels": (
        _csv("row number 3 says yes,neg\n"),
        None,
        ["2 row(s) with conflicting label"],
    ),
    "train/test leakage": (
        {
            "data/t/train.csv": TABLE,
            "data/t/test.csv": "text,label\nRow number 5 says YES,pos\nunseen text,neg\n",
        },
        {"source": "csv:data/t"},
        ["1 row(s) with leakage", "test row test.csv:2"],
    ),
    "leakage failing by reason only": (
        {
            "data/t/train.csv": TABLE + ",pos\n",
            "data/t/test.csv": "text,label\nrow number 5 says yes,pos\n",
        },
        {"source": "csv:data/t", "invalid_rows": {"default": "drop", "leakage": "fail"}},
        ["1 row(s) with leakage", "'fail' for leakage"],
    ),
    "missing data file": ({}, None, ["data file or directory not found: data/t.csv"]),
    "missing label column": (
        {"data/t.csv": "text,sentiment\nsome text,pos\n"},
        None,
        ["tasks.t.label_column: column 'label' not found", "columns there: text, sentiment"],
    ),
    "missing text column": (
        {"data/t.csv": "body,label\nsome text,pos\n"},
        None,
        ["tasks.t.text_columns: column 'text' not found"],
    ),
    "empty file": ({"data/t.csv": ""}, None, ["empty file (expected a header line)"]),
    "undecodable header": (
        {"data/t.csv": b"t\xffxt,label\n" + "\n".join(GOOD_ROWS).encode()},
        None,
        ["header line is not decodable as utf-8"],
    ),
    "one class only": (
        {"data/t.csv": "text,label\n" + "\n".join(f"text {i},pos" for i in range(30))},
        None,
        ["found 1 label(s) ['pos']", "needs >= 2"],
    ),
    "every row dropped": (
        {"data/t.csv": "text,label\n" + "\n".join(f"text {i}," for i in range(30))},
        {"invalid_rows": "drop"},
        ["tasks.t: no usable rows in csv:data/t.csv (dropped: missing_label 30)"],
    ),
    "regression label not a number": (
        {
            "data/t.csv": "text,label\n"
            + "".join(f"text {i},{i / 7:.3f}\n" for i in range(40))
            + "a scored row,high\n"
        },
        {"label_type": "regression"},
        ["unknown label", "'high'", "not a finite number"],
    ),
    "conllu line without 10 fields": (
        {
            "data/t.conllu": "# sent_id = 1\n1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n2\tthere\tthere\tADV\n\n"
        },
        {"source": "conllu:data/t.conllu"},
        ["malformed line", "t.conllu:3", "10 tab-separated fields, got 4"],
    ),
    "conllu tag outside the set": (
        {"data/t.conllu": "# sent_id = 1\n1\tHi\thi\tGREET\t_\t_\t0\troot\t_\t_\n\n"},
        {"source": "conllu:data/t.conllu"},
        ["unknown label", "['GREET']"],
    ),
    "label column is the text column": (
        _csv(""),
        {"label_column": "text"},
        ["tasks.t.label_column: 'text' is also a text column of t.csv"],
    ),
    "dev label never seen in train": (
        {
            "data/t/train.csv": TABLE,
            "data/t/dev.csv": "text,label\n" + "".join(f"dev {i},maybe\n" for i in range(8)),
            "data/t/test.csv": TABLE.replace("row number", "test row"),
        },
        {"source": "csv:data/t"},
        ["8 row(s) with unknown label", "label 'maybe'", "not in the train split's labels"],
    ),
    "a file where the output folder goes": (
        {"data/t.csv": TABLE, "data/prepared": "not a folder"},
        None,
        ["data/prepared: File exists", "a file is where a folder goes"],
    ),
    "field over the csv size limit": (
        _csv('"' + "x" * 200_000 + '",neg\n'),
        None,
        ["t.csv:62", "field larger than field limit"],
    ),
    "binary file": ({"data/t.csv": bytes(range(256)) * 50}, None, ["data/t.csv:", "malformed"]),
    "old Mac line endings": (
        {"data/t.csv": TABLE.replace("\n", "\r")},
        None,
        ["data/t.csv:1", "new-line character seen in unquoted field"],
    ),
    "header only": ({"data/t.csv": "text,label\n"}, None, ["tasks.t: no usable rows"]),
    "pair task without its second text": (
        {
            "data/t.csv": "text,other,label\n"
            + "".join(
                f"r {i},{'' if i % 3 == 0 else f'o {i}'},{'pos' if i % 2 else 'neg'}\n"
                for i in range(60)
            )
        },
        {"text_columns": ["text", "other"]},
        ["20 row(s) with empty text", "tasks.t.invalid_rows"],
    ),
    "table folder without train": (
        {"data/t/dev.csv": TABLE, "data/t/test.csv": TABLE},
        {"source": "csv:data/t"},
        ["tasks.t.source: no train.csv in data/t"],
    ),
    "glue folder of an unknown task": (
        {"data/FOO/train.tsv": "sentence\tlabel\nx\t1\n"},
        {"source": "glue_tsv:data/FOO"},
        ["cannot tell the GLUE task from the folder name 'FOO'"],
    ),
    "trec folder without its files": (
        {"data/trec/readme": "x"},
        {"source": "trec:data/trec"},
        ["none of train_5500.label, train_5500.txt found"],
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data(tmp_path, case):
    files, task_update, expected = DATA_CASES[case]
    params = base_params()
    params["tasks"]["t"].update(task_update or {})
    if params["tasks"]["t"]["source"].startswith("conllu:"):  # fine-tuning needs a sentence task
        params["tasks"]["u"] = {"source": "csv:data/u.csv"}
        params["pipeline"]["tasks"] = ["t", "u"]
        params["finetune"]["tasks"] = ["u"]
        params["probe"] = {"tasks": ["u"]}
    root = project(tmp_path, params, files)
    before = files_under(root)
    res = run(root, str(REPO / "stages/prepare.py"), "t")
    assert_clean_failure(res, expected)
    assert files_under(root) == before, "the failed stage left files"
    assert "data/prepared" in files or not (root / "data/prepared").exists()


def test_drop_policy_counts_every_reason(tmp_path):
    """With `drop`, the same bad rows are all counted per reason in meta.json, nothing else lost."""
    bad = (
        ",pos\n"  # empty text
        '"   ",neg\n'  # whitespace text
        "no label,\n"  # missing label
        "nan label,nan\n"  # NaN label
        "meh label,meh\n"  # unknown label
        'an "unquoted, comma" row,pos\n'  # wrong field count
        "row number 3 says yes,pos\n"  # duplicate
        "row number 4 says no,pos\n"  # conflicting label (with 'neg' in GOOD_ROWS): 2 rows
    )
    files = {
        "data/t/train.csv": TABLE.encode() + bad.encode() + b"caf\xe9,pos\n",
        "data/t/test.csv": "text,label\nROW NUMBER 7 SAYS YES,pos\n"
        + "\n".join(f"test text {i},{'neg' if i % 2 else 'pos'}" for i in range(10))
        + "\n",
    }
    params = base_params()
    params["tasks"]["t"].update(source="csv:data/t", invalid_rows="drop", labels=["neg", "pos"])
    root = project(tmp_path, params, files)
    res = run(root, str(REPO / "stages/prepare.py"), "t")
    assert res.returncode == 0, res.stderr
    meta = yaml.safe_load((root / "data/prepared/t/meta.json").read_text())
    assert meta["dropped"] == {
        "bad_field_count": 1,
        "malformed_line": 0,
        "undecodable": 1,
        "empty_text": 2,
        "missing_label": 2,
        "unknown_label": 1,
        "duplicate": 1,
        "conflicting_label": 2,
        "leakage": 1,
    }
    assert meta["invalid_rows"]["leakage"] == "drop"
    rows = {s: c["rows"] for s, c in meta["counts"].items()}
    # 60 good train rows - 1 (row 4's conflict) + 10 test rows; dev carved from train
    assert rows["train"] + rows["dev"] == 59 and rows["test"] == 10
    assert "dropped: " in res.stdout and "leakage 1" in res.stdout


# --------------------------------------------------------------------------- model folders


def _rewrite(name: str, edit: Callable[[str], str]) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        (model / name).write_text(edit((model / name).read_text()))

    return change


def _keep_only(*names: str) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        for f in model.iterdir():
            if f.name not in names:
                f.unlink()

    return change


def _truncate(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _wider(config: str) -> str:
    return config.replace('"hidden_size": 32', '"hidden_size": 64').replace(
        '"intermediate_size": 64', '"intermediate_size": 128'
    )


def _no_leading_special_token(model: Path) -> None:
    """tokenizer.json without its post-processor, loaded as a generic fast tokenizer (the
    BertTokenizer class of transformers 5 would rebuild its [CLS] ... [SEP] post-processor): the
    text starts at position 0, where the [CLS] vector is read."""
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["post_processor"] = None
    (model / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (model / "tokenizer_config.json").write_text(json.dumps(config))


def _mean_pooling_everywhere(params: dict) -> None:
    _set("finetune.train.pooling", "mean")(params)
    _set("probe.features", "mean")(params)


NO_LEADING_SPECIAL = [
    "model.name: the tokenizer of",
    "adds no special token before the text",
    "word 'the'",
    "use a model whose tokenizer adds a leading [CLS] or <s> token",
]

# name: (change to the model folder, params edit, stage, expected message parts)
MODEL_CASES = {
    "no tokenizer files": (
        _keep_only("config.json", "model.safetensors"),
        None,
        "embed",
        ["model.name: the tokenizer of", "maps every word to [UNK]", "tokenizer files"],
    ),
    "damaged tokenizer.json": (
        _rewrite("tokenizer.json", lambda _: "{}"),
        None,
        "embed",
        ["model.name: cannot load the tokenizer of", "damaged or incomplete"],
    ),
    "weights of another shape than the config": (
        _rewrite("config.json", _wider),
        None,
        "embed",
        ["model.name: cannot load the weights of", "belong together"],
    ),
    "truncated weights file": (
        _truncate,
        None,
        "embed",
        ["model.name: cannot load the weights of", "SafetensorError", "complete"],
    ),
    "config.json not JSON": (
        _rewrite("config.json", lambda _: "{not json"),
        None,
        "embed",
        ["model.name: cannot load", "not a valid JSON file"],
    ),
    "unknown model_type": (
        _rewrite(
            "config.json", lambda c: c.replace('"model_type": "bert"', '"model_type": "frob"')
        ),
        None,
        "embed",
        ["model.name: cannot load", "frob"],
    ),
    "tokenizer adds no leading special token": (
        _no_leading_special_token,
        None,
        "embed",
        NO_LEADING_SPECIAL,
    ),
    # the embed stage stores the [CLS] vectors and the isotropy stage measures them whatever the
    # pooling, so mean pooling everywhere is no way around it
    "tokenizer adds no leading special token, mean pooling": (
        _no_leading_special_token,
        _mean_pooling_everywhere,
        "embed",
        [*NO_LEADING_SPECIAL, "pooling: mean does not avoid this"],
    ),
    "probe layer past the last": (
        None,
        _set("probe.layers", [0, 42]),
        "probe",
        ["probe.layers: layer 42 is out of range: the encoder has 3 layers"],
    ),
    "probe layer before the first": (
        None,
        _set("probe.layers", [-4]),
        "probe",
        ["probe.layers: layer -4 is out of range", "down to -3"],
    ),
    "isotropy top_k wider than the model": (
        None,
        _set("isotropy.top_k", [1, 64]),
        "isotropy",
        ["isotropy.top_k: [64] more than the 32 dimensions"],
    ),
}


@pytest.fixture(scope="module")
def embedded_project(tmp_path_factory, tiny_bert) -> tuple[Path, dict]:
    """A project on the tiny BERT, prepared and embedded (probe and isotropy read the embeddings)."""
    params = base_params()
    params["model"]["name"] = str(tiny_bert)
    params["embed"] = {"max_length": 32, "batch_size": 16}
    root = project(tmp_path_factory.mktemp("embedded"), params, {"data/t.csv": TABLE})
    for stage in ("prepare", "embed"):
        res = run(root, str(REPO / f"stages/{stage}.py"), "t")
        assert res.returncode == 0, res.stderr[-2000:]
    return root, params


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_folder_or_model_bound_param(tmp_path, embedded_project, tiny_bert, case):
    import shutil

    change, edit, stage, expected = MODEL_CASES[case]
    template, params = embedded_project
    root = tmp_path / "p"
    shutil.copytree(template, root, symlinks=True)
    params = copy.deepcopy(params)
    if change is not None:
        shutil.copytree(tiny_bert, tmp_path / "model")
        change(tmp_path / "model")
        params["model"]["name"] = str(tmp_path / "model")
        shutil.rmtree(root / "data/embeddings")
    if edit is not None:
        edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = files_under(root)
    res = run(root, str(REPO / f"stages/{stage}.py"), "t")
    assert_clean_failure(res, expected)
    assert files_under(root) == before, "the failed stage left files"

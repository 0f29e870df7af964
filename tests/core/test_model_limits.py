"""The most tokens a model takes (`core.models.model_length_limit`) and every tokenizing stage
stopping on a requested max length above it before it does any work: closed-form limits of tiny
configs, the limits checked against transformers' own modules (the limit fits, one more token
does not), and the embed, finetune, embed_post and probe_cross entry points on a model with 16
positions: one `isoprobe: error:` line naming the key, value and limit, exit code 2, no traceback,
no output and no MLflow run."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from pipeline.test_bad_inputs import (
    GOOD_ROWS,
    assert_clean_failure,
    base_params,
    files_under,
    project,
    run,
)

from conftest import REPO, make_tiny_bert
from isoprobe.core.config import load_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json, write_json
from isoprobe.core.models import check_lengths, model_length_limit, position_limit

NO_LIMIT = SimpleNamespace(model_max_length=int(1e30))  # a tokenizer without a length of its own
POSITIONS = 16  # of the short model the stages run on
LONG_WORDS = ["the", "movie", "was", *["really"] * 40, "good"]
LONG_ROW = " ".join(LONG_WORDS) + ",pos"  # 46 tokens with [CLS] and [SEP]


def tokenizer_with(length) -> SimpleNamespace:
    return SimpleNamespace(model_max_length=length)


# --------------------------------------------------------------------------- the limit


def test_bert_takes_its_max_position_embeddings():
    from transformers import BertConfig

    limit = model_length_limit(BertConfig(max_position_embeddings=64), NO_LIMIT)
    assert limit == (64, "config max_position_embeddings 64")


@pytest.mark.parametrize(
    ("model_type", "pad", "expected"),
    [("roberta", 1, 64), ("xlm-roberta", 1, 64), ("camembert", 1, 64), ("roberta", 3, 62)],
)
def test_roberta_style_models_lose_the_positions_up_to_the_padding_index(model_type, pad, expected):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, max_position_embeddings=66, pad_token_id=pad)
    limit, source = model_length_limit(config, NO_LIMIT)
    assert limit == expected
    assert source == (
        f"config max_position_embeddings 66 minus {pad + 1}: {model_type} positions start after "
        f"the padding index {pad}"
    )


def test_roberta_base_takes_512_tokens():
    from transformers import RobertaConfig

    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1))[0] == 512


def test_mpnet_pads_at_index_1_whatever_the_config_says():
    from transformers import MPNetConfig

    assert position_limit(MPNetConfig(max_position_embeddings=514, pad_token_id=0))[0] == 512


def test_a_smaller_tokenizer_length_wins():
    from transformers import BertConfig

    config = BertConfig(max_position_embeddings=64)
    assert model_length_limit(config, tokenizer_with(32)) == (32, "tokenizer model_max_length 32")
    assert model_length_limit(config, tokenizer_with(100))[0] == 64
    assert model_length_limit(config, tokenizer_with(64)) == (
        64,
        "config max_position_embeddings 64",
    )


@pytest.mark.parametrize("sentinel", [int(1e30), 1e30, 10**12, None, 0])
def test_a_huge_or_missing_tokenizer_length_is_ignored(sentinel):
    from transformers import BertConfig

    assert (
        model_length_limit(BertConfig(max_position_embeddings=64), tokenizer_with(sentinel))[0]
        == 64
    )


def test_models_without_absolute_positions_have_only_the_tokenizer_limit():
    from transformers import DebertaV2Config, EsmConfig, PretrainedConfig

    no_table = [
        PretrainedConfig(),  # no max_position_embeddings
        EsmConfig(max_position_embeddings=1026, pad_token_id=1, position_embedding_type="rotary"),
        DebertaV2Config(max_position_embeddings=512, position_biased_input=False),
    ]
    for config in no_table:
        assert model_length_limit(config, NO_LIMIT) is None
        assert model_length_limit(config, tokenizer_with(2048)) == (
            2048, "tokenizer model_max_length 2048",
        )  # fmt: skip


def test_the_embedded_model_takes_512_tokens():
    from transformers import AutoConfig

    from isoprobe.core.models import load_tokenizer, resolve_model

    model = resolve_model("embedded:all-MiniLM-L6-v2")
    config = AutoConfig.from_pretrained(model.location)
    assert model_length_limit(config, load_tokenizer(model)) == (
        512, "config max_position_embeddings 512",
    )  # fmt: skip


@pytest.mark.parametrize(
    "model_type", ["bert", "distilbert", "roberta", "xlm-roberta", "camembert", "mpnet", "esm"]
)
def test_the_limit_is_what_the_transformers_module_takes(model_type):
    """A sequence of `limit` tokens runs through the real module, one more token does not."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(
        model_type, vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    limit, _ = position_limit(config)
    model = AutoModel.from_config(config).eval()

    def forward(n: int) -> None:
        with torch.no_grad():
            model(
                input_ids=torch.full((1, n), 5), attention_mask=torch.ones(1, n, dtype=torch.long)
            )

    forward(limit)
    with pytest.raises((RuntimeError, IndexError)):
        forward(limit + 1)


# --------------------------------------------------------------------------- check_lengths


def test_a_length_up_to_the_limit_passes():
    from transformers import BertConfig, PretrainedConfig

    config = BertConfig(max_position_embeddings=64)
    check_lengths("m", config, NO_LIMIT, {"embed.max_length": 64, "embed.word_max_length": 4})
    check_lengths("m", PretrainedConfig(), NO_LIMIT, {"embed.max_length": 8192})  # no limit


def test_one_error_names_every_key_above_the_limit():
    from transformers import RobertaConfig

    config = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    lengths = {
        "embed.max_length": 1024,
        "embed.word_max_length": 513,
        "finetune.train.max_length": 512,
    }
    with pytest.raises(IsoprobeError) as err:
        check_lengths("FacebookAI/roberta-base", config, NO_LIMIT, lengths)
    assert str(err.value) == (
        "embed.max_length is 1024, embed.word_max_length is 513, but model 'FacebookAI/roberta-base' "
        "takes at most 512 tokens per input (config max_position_embeddings 514 minus 2: roberta "
        "positions start after the padding index 1); set embed.max_length and "
        "embed.word_max_length to 512 or less (longer inputs are cut there and counted), or use a "
        "model with longer inputs"
    )


def test_the_tokenizer_is_named_when_its_length_is_the_limit():
    from transformers import BertConfig

    with pytest.raises(
        IsoprobeError, match=r"at most 256 tokens per input \(tokenizer model_max_length 256\)"
    ):
        check_lengths("m", BertConfig(), tokenizer_with(256), {"finetune.train.max_length": 300})


# --------------------------------------------------------------------------- the stages


def make_short_bert(folder: Path, positions: int) -> Path:
    """tiny_bert's tokenizer and shape with a position table of `positions` rows."""
    from transformers import BertConfig, BertModel

    make_tiny_bert(folder)
    config = BertConfig.from_pretrained(folder)
    config.max_position_embeddings = positions
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A project of one csv task `t` (with one long row) on the short model, prepared."""
    model = make_short_bert(tmp_path_factory.mktemp("short-bert"), POSITIONS)
    root = tmp_path_factory.mktemp("limits")
    rows = "text,label\n" + "\n".join(GOOD_ROWS) + "\n" + LONG_ROW + "\n"
    project(root, stage_params(root, model, POSITIONS, POSITIONS), {"data/t.csv": rows})
    res = run(root, str(REPO / "stages/prepare.py"), "t")
    assert res.returncode == 0, res.stderr[-2000:]
    return root


def stage_params(root: Path, model: Path, embed_length: int, train_length: int) -> dict:
    params = base_params()
    params["model"] = {"name": str(model)}
    params["finetune"].update(methods=["baseline"], seeds=[0])
    params["finetune"]["train"].update(max_length=train_length, device="cpu", num_threads=1)
    params["embed"] = {
        "max_length": embed_length,
        "device": "cpu",
        "num_threads": 1,
        "batch_size": 16,
    }
    params["tracking"] = {"enabled": True, "uri": f"sqlite:///{root / 'mlflow.db'}"}
    return params


def copy_with(prepared: Path, tmp_path: Path, embed_length: int, train_length: int) -> Path:
    """A copy of the prepared project with these max lengths (tracking into its own mlflow.db)."""
    root = tmp_path / "project"
    shutil.copytree(prepared, root)
    model = yaml.safe_load((prepared / "params.yaml").read_text())["model"]["name"]
    params = stage_params(root, Path(model), embed_length, train_length)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def stage(root: Path, name: str, *args: str):
    return run(root, str(REPO / "stages" / f"{name}.py"), *args, "--no-progress")


def mlflow_runs(root: Path) -> list:
    if not (root / "mlflow.db").is_file():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def assert_one_error_line(res, expected: list[str]) -> None:
    """assert_clean_failure, and the error is one line, the last on stderr."""
    assert_clean_failure(res, expected)
    errors = [line for line in res.stderr.splitlines() if line.startswith("isoprobe: error:")]
    assert len(errors) == 1 and res.stderr.rstrip("\n").endswith(errors[0]), res.stderr[-2000:]


def limit_message(key: str, value: int, model: str) -> list[str]:
    return [
        f"{key} is {value}, but model '{model}' takes at most {POSITIONS} tokens per input "
        f"(config max_position_embeddings {POSITIONS}); set {key} to {POSITIONS} or less",
    ]


def model_of(root: Path) -> str:
    return yaml.safe_load((root / "params.yaml").read_text())["model"]["name"]


def test_embed_stops_before_writing_on_a_max_length_above_the_limit(prepared, tmp_path):
    root = copy_with(prepared, tmp_path, embed_length=2 * POSITIONS, train_length=POSITIONS)
    before = files_under(root)
    res = stage(root, "embed", "t")
    assert_one_error_line(res, limit_message("embed.max_length", 2 * POSITIONS, model_of(root)))
    assert files_under(root) == before and not (root / "data/embeddings").exists()


def test_finetune_stops_before_its_run_and_checkpoints_on_a_max_length_above_the_limit(
    prepared, tmp_path
):
    root = copy_with(prepared, tmp_path, embed_length=POSITIONS, train_length=2 * POSITIONS)
    before = files_under(root)
    res = stage(root, "finetune", "t", "baseline", "0")
    expected = limit_message("finetune.train.max_length", 2 * POSITIONS, model_of(root))
    assert_one_error_line(res, expected)
    assert files_under(root) == before  # no checkpoint, model, metrics, plots, nor mlflow.db
    assert mlflow_runs(root) == []


def test_lengths_equal_to_the_limit_run_and_embed_post_checks_the_fine_tuned_model(
    prepared, tmp_path
):
    root = copy_with(prepared, tmp_path, embed_length=POSITIONS, train_length=POSITIONS)
    res = stage(root, "embed", "t")
    assert res.returncode == 0, res.stderr[-2000:]
    info = read_json(root / "data/embeddings/pretrained/t/info.json")
    assert info["max_length"] == POSITIONS
    assert sum(s["truncated_rows"] for s in info["splits"].values()) >= 1  # the long row, cut
    res = stage(root, "finetune", "t", "baseline", "0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(root / "metrics/finetune/t/baseline/0.json")["status"] == "ok"
    (finetune_run,) = mlflow_runs(root)

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["embed"]["max_length"] = 2 * POSITIONS
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = files_under(root)
    res = stage(root, "embed_post", "t", "baseline", "0")
    assert_one_error_line(
        res, limit_message("embed.max_length", 2 * POSITIONS, "models/t/baseline/0")
    )
    assert files_under(root) == before
    (after,) = mlflow_runs(root)
    assert after.info.run_id == finetune_run.info.run_id
    assert not [k for k in after.data.metrics if k.startswith("iso_")]


def test_probe_cross_word_vectors_stop_on_a_word_max_length_above_the_limit(prepared, tmp_path):
    from isoprobe.probing.run import embed_words

    params = stage_params(tmp_path, Path(model_of(prepared)), POSITIONS, POSITIONS)
    params["embed"]["word_max_length"] = POSITIONS + 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows = {"train": [{"id": "0", "tokens": LONG_WORDS, "tags": [0] * len(LONG_WORDS)}]}
    with pytest.raises(
        IsoprobeError, match=r"^embed.word_max_length is 17, but model .* at most 16 tokens"
    ):
        embed_words(load_params(tmp_path / "params.yaml"), model_of(prepared), rows, progress=False)
    params["embed"]["word_max_length"] = POSITIONS
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data, cut = embed_words(
        load_params(tmp_path / "params.yaml"), model_of(prepared), rows, progress=False
    )
    assert cut["train"] == len(LONG_WORDS) - (POSITIONS - 2)  # [CLS], 14 words, [SEP]
    assert len(data["train"].y) == POSITIONS - 2


def test_embed_of_a_token_task_checks_word_max_length(prepared, tmp_path, monkeypatch):
    from isoprobe.embed.run import run_embed

    root = copy_with(prepared, tmp_path, embed_length=POSITIONS, train_length=POSITIONS)
    meta = read_json(root / "data/prepared/t/meta.json")
    write_json(root / "data/prepared/t/meta.json", {**meta, "kind": "token"})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["embed"]["word_max_length"] = POSITIONS + 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    with pytest.raises(IsoprobeError, match=r"^embed.word_max_length is 17, but .* at most 16"):
        run_embed(load_params(root / "params.yaml"), "t", progress=False)
    assert not (root / "data/embeddings").exists()

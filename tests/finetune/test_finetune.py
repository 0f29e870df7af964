"""Fine-tuning on a tiny random BERT: every head learns a separable task, runs are reproducible,
gradients are tracked, models round-trip through their folder, scores match reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from isoprobe.core.config import TrainConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.models import load_encoder, resolve_model
from isoprobe.core.scores import main_score, task_scores
from isoprobe.finetune.classifier import (
    EncoderClassifier,
    check_pooling,
    load_head,
    save_classifier,
)
from isoprobe.finetune.heads import METHODS, ClassifierHead
from isoprobe.finetune.loop import (
    finetune,
    gradient_summary,
    length_grouped_batches,
    seed_everything,
)

FILLER = "the a movie film story plot actor was is really very".split()


def synthetic(n: int, seed: int, regression: bool = False) -> list[dict]:
    """Label = which cue word appears among filler words (linearly separable through [CLS])."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lab = int(rng.integers(2))
        words = [*rng.choice(FILLER, 3), "good" if lab else "bad", *rng.choice(FILLER, 2)]
        label = float(lab * 4 + rng.normal(0, 0.1)) if regression else lab
        rows.append({"id": str(i), "text_a": " ".join(words), "text_b": None, "label": label})
    return rows


SPLITS = {"train": synthetic(240, 1), "dev": synthetic(80, 2), "test": synthetic(80, 3)}
META = {"label_type": "classification", "metric": "accuracy", "num_labels": 2}
CFG = TrainConfig(
    lr=2e-3, batch_size=16, epochs=6, max_length=16, warmup_ratio=0.1, dropout=0.0, device="cpu"
)


def build(
    tiny_bert, method: str, seed: int, outputs: int = 2, pooling: str = "cls"
) -> EncoderClassifier:
    seed_everything(seed)
    encoder, _, info = load_encoder(resolve_model(str(tiny_bert)))
    return EncoderClassifier(
        encoder, ClassifierHead(method, info["hidden_size"], outputs, CFG.dropout), pooling
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return load_encoder(resolve_model(str(tiny_bert)))[1]


@pytest.mark.parametrize("method", METHODS)
def test_every_head_learns_a_separable_task(tiny_bert, tokenizer, method):
    model = build(tiny_bert, method, 0)
    result = finetune(model, tokenizer, SPLITS, META, CFG, seed=0, progress=False)
    assert result.status == "ok"
    assert result.dev["accuracy"] >= 0.95, (method, result.epochs)
    assert result.test["accuracy"] >= 0.9
    assert result.best_epoch == max(
        range(1, 7), key=lambda e: (result.epochs[e - 1]["dev_accuracy"], -e)
    )
    steps_per_epoch = len(length_grouped_batches(np.zeros(240), 16, np.random.default_rng(0)))
    assert len(result.steps) == 6 * steps_per_epoch == result.steps[-1]["step"]
    assert result.train_examples == 6 * 240
    g = gradient_summary(result.steps)
    for k in ("grad_cls", "grad_head", "grad_total"):
        assert 0 < g[k]["median"] <= g[k]["p99"] <= g[k]["max"]
    lrs = [s["lr"] for s in result.steps]
    peak = int(np.argmax(lrs))
    assert (
        lrs[0] < lrs[peak] == pytest.approx(CFG.lr) and lrs[-1] < lrs[peak]
    )  # warm-up, then decay


def test_same_seed_same_run_and_other_seed_differs(tiny_bert, tokenizer):
    cfg = CFG.model_copy(update={"epochs": 2})
    runs = [
        finetune(build(tiny_bert, "isobn", s), tokenizer, SPLITS, META, cfg, seed=s, progress=False)
        for s in (5, 5, 6)
    ]
    assert (
        runs[0].steps == runs[1].steps
        and runs[0].dev == runs[1].dev
        and runs[0].test == runs[1].test
    )
    assert runs[0].steps != runs[2].steps


def test_gradient_at_cls_is_the_norm_of_d_loss_d_cls(tmp_path, tokenizer):
    """grad_cls of the first step equals ||d loss / d pooled|| computed by hand on the same batch
    (a model without dropout, so both forwards are the same function)."""
    from conftest import make_tiny_bert

    no_dropout = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    cfg = CFG.model_copy(update={"epochs": 1, "dropout": 0.0})
    model = build(no_dropout, "baseline", 3)
    reference = build(no_dropout, "baseline", 3)
    reference.load_state_dict(model.state_dict())
    result = finetune(model, tokenizer, SPLITS, META, cfg, seed=3, progress=False)
    from isoprobe.finetune.loop import collate, encode_split

    feats, lengths, labels = encode_split(tokenizer, SPLITS["train"], cfg.max_length)
    first = length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(3))[0]
    batch = collate(tokenizer, feats, labels, first, False)
    y = batch.pop("labels")
    reference.train()
    logits, pooled, _ = reference(**batch)
    pooled.retain_grad()
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert result.steps[0]["grad_cls"] == pytest.approx(float(pooled.grad.norm()), rel=1e-4)
    assert result.steps[0]["grad_head"] == pytest.approx(
        float(reference.head.linear.weight.grad.norm()), rel=1e-4
    )


def test_regression_trains_with_mse(tiny_bert, tokenizer):
    splits = {
        "train": synthetic(240, 1, True),
        "dev": synthetic(80, 2, True),
        "test": synthetic(80, 3, True),
    }
    meta = {"label_type": "regression", "metric": "correlation", "num_labels": 1}
    result = finetune(
        build(tiny_bert, "layernorm", 0, outputs=1),
        tokenizer,
        splits,
        meta,
        CFG,
        seed=0,
        progress=False,
    )
    assert set(result.test) == {"pearson", "spearman", "pearson_spearman", "mse"}
    assert result.test["pearson"] > 0.9


def test_regression_head_starts_at_the_mean_target(tiny_bert, tokenizer):
    """A head that removes the [CLS] mean (standardize) cannot supply the target mean through its
    weights; the output bias starts there instead. With a negligible learning rate it stays there,
    and the test MSE is about the target variance, not variance + mean^2 (predicting about 0)."""
    splits = {s: synthetic(n, i + 1, True) for i, (s, n) in enumerate([("train", 240), ("dev", 80), ("test", 80)])}  # fmt: skip
    y_train = np.array([r["label"] for r in splits["train"]])
    y_test = np.array([r["label"] for r in splits["test"]])
    meta = {"label_type": "regression", "metric": "correlation", "num_labels": 1}
    cfg = CFG.model_copy(update={"epochs": 1, "lr": 1e-9})
    model = build(tiny_bert, "standardize", 0, outputs=1)
    result = finetune(model, tokenizer, splits, meta, cfg, seed=0, progress=False)
    assert float(model.head.linear.bias) == pytest.approx(y_train.mean(), abs=1e-4)
    assert abs(y_train.mean()) > 1  # the check above is not trivially met by a zero bias
    assert result.test["mse"] < np.var(y_test) + 0.5 < np.mean(y_test**2)


def test_timing_and_threads_of_a_run_without_an_accelerator(tiny_bert, tokenizer):
    """finetune() builds its accelerator from cfg (device, CPU threads); throughput leaves out the
    dev evaluations."""
    threads = torch.get_num_threads()
    try:
        cfg = CFG.model_copy(update={"epochs": 2, "num_threads": 1})
        result = finetune(build(tiny_bert, "baseline", 0), tokenizer, SPLITS, META, cfg, seed=0, progress=False)  # fmt: skip
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert 0 < result.eval_seconds < result.seconds
    assert result.examples_per_second == pytest.approx(
        2 * 240 / (result.seconds - result.eval_seconds)
    )


def test_model_folder_round_trip(tiny_bert, tokenizer, tmp_path):
    model = build(tiny_bert, "isobn", 0)
    finetune(
        model, tokenizer, SPLITS, META, CFG.model_copy(update={"epochs": 1}), seed=0, progress=False
    )
    save_classifier(
        model,
        tokenizer,
        tmp_path,
        {"method": "isobn", "options": {}, "hidden_size": 32, "num_outputs": 2, "dropout": 0.0},
    )
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    encoder, tok, _ = load_encoder(resolve_model(str(tmp_path)))
    head, cfg = load_head(tmp_path)
    assert (
        cfg["pooling"] == "cls"
        and int(head.norm.stats.steps) == int(model.head.norm.stats.steps) > 0
    )
    loaded = EncoderClassifier(encoder, head, "cls").eval()
    model.eval()
    batch = tok(["the movie was good", "a bad film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(loaded(**batch)[0].numpy(), model(**batch)[0].numpy(), atol=1e-6)


def test_pooler_needs_a_trained_pooler():
    with pytest.raises(
        IsoprobeError, match="finetune.train.pooling: 'pooler' needs a trained pooler"
    ):
        check_pooling("pooler", {"name": "m", "has_pooler": True, "pooler_trained": False})
    check_pooling("pooler", {"name": "m", "has_pooler": True, "pooler_trained": True})
    check_pooling("cls", {"name": "m", "has_pooler": False, "pooler_trained": False})


def test_length_grouped_batches():
    lengths = np.random.default_rng(0).integers(3, 60, size=1001)
    batches = length_grouped_batches(lengths, 32, np.random.default_rng(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1001))
    assert all(2 <= len(b) <= 33 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)  # similar lengths share a batch
    assert batches == length_grouped_batches(lengths, 32, np.random.default_rng(1))
    assert batches != length_grouped_batches(lengths, 32, np.random.default_rng(2))


def test_scores_match_reference_formulas():
    y = np.array([0, 1, 1, 0, 1, 1])
    logits = np.array([[2, 1], [0, 3], [1, 0], [0, 1], [0, 2], [3, 0]], dtype=float)
    pred = logits.argmax(1)  # [0, 1, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 1, 1, 2
    assert task_scores("accuracy", y, logits) == {"accuracy": 3 / 6}
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert task_scores("mcc", y, logits)["mcc"] == pytest.approx(mcc)
    assert task_scores("f1", y, logits)["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert (pred == [0, 1, 0, 1, 1, 0]).all()
    t = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    p = np.array([0.2, 1.5, 2.0, 3.9, 4.1])
    s = task_scores("correlation", t, p)
    assert s["pearson"] == pytest.approx(pearsonr(t, p)[0]) and s["spearman"] == pytest.approx(
        spearmanr(t, p)[0]
    )
    assert s["pearson_spearman"] == pytest.approx((s["pearson"] + s["spearman"]) / 2)
    assert task_scores("correlation", t, np.ones(5))["pearson"] == 0.0
    assert [main_score(m) for m in ("accuracy", "mcc", "f1", "correlation")] == [
        "accuracy",
        "mcc",
        "f1",
        "pearson_spearman",
    ]

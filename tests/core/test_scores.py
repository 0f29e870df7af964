"""The scores of a constant prediction (what makes a fine-tuning run degenerate): hand-computed,
and the same as `task_scores` gives for a model that outputs the same thing for every row."""

from __future__ import annotations

import numpy as np
import pytest

from isoprobe.core.scores import (
    constant_prediction_scores,
    is_constant_prediction_score,
    task_scores,
)


def test_constant_prediction_scores_hand_computed():
    # RTE-like test split: 131 entailment, 146 not: always "not" scores 146/277
    assert constant_prediction_scores("accuracy", {"entailment": 131, "not": 146}) == [
        pytest.approx(131 / 277),
        pytest.approx(146 / 277),
    ]
    assert constant_prediction_scores("mcc", {"a": 3, "b": 7}) == [0.0]
    assert constant_prediction_scores("mcc", None) == [0.0]
    assert constant_prediction_scores("correlation", None) == [0.0]
    # F1 of the positive label (code 1): always negative 0, always positive 2p / (1 + p), p = 0.4
    assert constant_prediction_scores("f1", {"no": 6, "yes": 4}) == [0.0, pytest.approx(0.8 / 1.4)]
    assert constant_prediction_scores("accuracy", None) == []
    assert constant_prediction_scores("accuracy", {}) == []
    assert constant_prediction_scores("f1", {"a": 1, "b": 2, "c": 3}) == []
    with pytest.raises(ValueError, match="unknown metric"):
        constant_prediction_scores("bleu", {"a": 1})


@pytest.mark.parametrize(("metric", "n_labels"), [("accuracy", 3), ("mcc", 2), ("f1", 2)])
def test_a_constant_model_scores_a_constant_prediction_score(metric, n_labels):
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_labels, size=50)
    counts = {f"l{c}": int((y == c).sum()) for c in range(n_labels)}
    main = "accuracy" if metric == "accuracy" else metric
    for c in range(n_labels):
        logits = np.zeros((50, n_labels))
        logits[:, c] = 1.0  # every row predicted c
        score = task_scores(metric, y, logits)[main]
        assert is_constant_prediction_score(score, metric, counts), (metric, c, score)
    # a model that learned something is not degenerate
    good = np.eye(n_labels)[y]
    assert not is_constant_prediction_score(task_scores(metric, y, good)[main], metric, counts)


def test_a_constant_regression_scores_zero_correlation():
    y = np.linspace(0, 5, 20)
    score = task_scores("correlation", y, np.full(20, 2.5))["pearson_spearman"]
    assert is_constant_prediction_score(score, "correlation", None)
    assert not is_constant_prediction_score(0.31, "correlation", None)


def test_undecidable_without_label_counts():
    assert is_constant_prediction_score(0.6, "accuracy", None) is None
    assert is_constant_prediction_score(0.6, "accuracy", {"a": 6, "b": 4}) is True
    assert is_constant_prediction_score(0.6 + 1e-6, "accuracy", {"a": 6, "b": 4}) is False

"""Task scores from predictions: accuracy, Matthews correlation (CoLA), F1 (MRPC/QQP), Pearson and
Spearman correlation (STS-B). `main_score` names the one used to pick the best epoch."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

MAIN = {"accuracy": "accuracy", "mcc": "mcc", "f1": "f1", "correlation": "pearson_spearman"}


def main_score(metric: str) -> str:
    return MAIN[metric]


def task_scores(metric: str, y_true: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """`output`: logits [N, C] for classification, predictions [N] (or [N, 1]) for regression."""
    y_true = np.asarray(y_true)
    if metric == "correlation":
        pred = np.asarray(output, dtype=float).reshape(len(y_true))
        if np.std(pred) == 0 or np.std(y_true) == 0:
            p = s = 0.0  # undefined correlation of a constant: no better than chance
        else:
            p, s = float(pearsonr(pred, y_true)[0]), float(spearmanr(pred, y_true)[0])
        return {
            "pearson": p,
            "spearman": s,
            "pearson_spearman": (p + s) / 2,
            "mse": float(np.mean((pred - y_true) ** 2)),
        }
    pred = np.asarray(output).argmax(-1)
    out = {"accuracy": float(accuracy_score(y_true, pred))}
    if metric == "mcc":
        out["mcc"] = float(matthews_corrcoef(y_true, pred))
    elif metric == "f1":
        out["f1"] = float(f1_score(y_true, pred, pos_label=1, average="binary", zero_division=0))
    return out


def constant_prediction_scores(metric: str, label_counts: dict[str, int] | None) -> list[float]:
    """The main scores of `metric` that a model predicting the same output for every test row gets,
    given the test split's rows per label (classification; None or {} for regression):
    accuracy: each label's share (the majority class's the largest); mcc: 0; f1: 0 (always the
    negative label) and 2p / (1 + p) (always the positive one, p its share); correlation: 0 (the
    correlation of a constant is undefined, scored 0 by `task_scores`). [] when the counts a
    metric needs are missing."""
    if metric in ("mcc", "correlation"):
        return [0.0]
    counts = [int(c) for c in (label_counts or {}).values()]
    n = sum(counts)
    if n <= 0:
        return []
    if metric == "accuracy":
        return sorted({c / n for c in counts})
    if metric == "f1":
        if len(counts) != 2:
            return []
        p = counts[1] / n
        return [0.0, 2 * p / (1 + p)]
    raise ValueError(f"unknown metric {metric!r}: expected one of {sorted(MAIN)}")


def is_constant_prediction_score(
    score: float, metric: str, label_counts: dict[str, int] | None, tol: float = 1e-9
) -> bool | None:
    """Whether `score` equals a constant prediction's (`constant_prediction_scores`) within `tol`:
    a degenerate run, one that learned nothing of the inputs. None when it cannot be told (the
    label counts an accuracy or F1 comparison needs are missing)."""
    chance = constant_prediction_scores(metric, label_counts)
    if not chance:
        return None
    return any(abs(score - c) <= tol for c in chance)

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

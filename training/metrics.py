"""Classification metrics as plain JSON-able dicts (for metrics.json and TensorBoard).

Accuracy alone hides a model that calls everything ``straight`` on a straight-heavy town, so every
split reports per-class precision/recall/F1, macro F1, the confusion matrix, ROC-AUC and the
accuracy broken down per town and per weather; ``balanced_accuracy`` (mean recall over the classes
present) and the 15-bin expected calibration error ``ece`` of the given probabilities.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _group_accuracy(groups: np.ndarray, correct: np.ndarray) -> dict[str, dict]:
    out = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        out[str(g)] = {"accuracy": float(correct[m].mean()), "frames": int(m.sum())}
    return out


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                           towns: np.ndarray | None = None, weathers: np.ndarray | None = None,
                           loss: float | None = None) -> dict:
    """Metrics of predictions ``probs`` (N x C softmax) against integer ``labels`` (N).

    ``confusion_matrix[i][j]`` counts frames of true class i predicted as j. ``roc_auc`` scores
    p(class 1) against class 1 (for two classes the value is the same either way round); it is
    None when the split holds a single class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_cls = len(classes)
    if len(labels) == 0:
        return {"frames": 0}
    pred = probs.argmax(1)
    correct = pred == labels
    cm = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    per_class = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(cm[i, :].sum())}
    roc_auc = None
    if n_cls == 2 and len(set(labels.tolist())) == 2:
        roc_auc = roc_auc_score(labels, probs[:, 1])
    recalls = [v["recall"] for c, v in per_class.items() if v["support"]]
    from training.calibration import expected_calibration_error
    out = {
        "frames": int(len(labels)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "ece": expected_calibration_error(probs, labels),
        "per_class": per_class,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "confusion_matrix": cm.tolist(),
        "roc_auc": roc_auc,
    }
    if loss is not None:
        out["loss"] = float(loss)
    if towns is not None:
        out["accuracy_per_town"] = _group_accuracy(np.asarray(towns), correct)
    if weathers is not None:
        out["accuracy_per_weather"] = _group_accuracy(np.asarray(weathers), correct)
    return out


def roc_auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC (the Mann-Whitney statistic with tied scores sharing their mean rank), as sklearn's."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    for f, c in zip(first, counts):
        ranks[order[f:f + c]] = f + (c + 1) / 2.0
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))

"""Robustness report: where a classifier is weak (per weather preset, town and camera variation).

A single accuracy hides a model that is fine at noon and blind at night, or one that calls every
frame of a straight-heavy town ``straight``. For each grouping column the report gives, per cell,
frames, accuracy, balanced accuracy and both recalls; the weakest cells (lowest balanced accuracy,
ties broken by accuracy, cells of at least ``min_frames`` frames) are named at the top.

Given each frame's episode, every cell also says how many episodes its frames come from. A
collector that keeps one weather preset for 25 frames fills a preset's cell from a handful of
drives: its accuracy is then as much about the places those drives went as about the weather
(issue 14: CloudyNight scored 81.8 % on 66 frames from 3 episodes, all in one weather block each).
Such cells are flagged, and the report says how to collect data that separates the two.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


FEW_EPISODES = 5
"""A cell whose frames come from fewer episodes than this is flagged (see the module docstring)."""


def _cell(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str], episodes: np.ndarray | None = None) -> dict:
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    recalls = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    present = [r for r in recalls.values() if r is not None]
    cell = {"frames": int(len(labels)), "accuracy": float((labels == pred).mean()),
            "balanced_accuracy": float(np.mean(present)), "recall": recalls,
            "support": {c: int(cm[i].sum()) for i, c in enumerate(classes)}, "confusion_matrix": cm.tolist()}
    if episodes is not None:
        cell["episodes"] = int(len(set(episodes.tolist())))
    return cell


def robustness_report(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      groups: Mapping[str, np.ndarray], min_frames: int = 20, n_weakest: int = 3,
                      episodes: np.ndarray | None = None) -> dict:
    """Per-group metrics and the weakest cells.

    Args:
        labels: N true class indices; probs: N x C probabilities (argmax is the prediction).
        groups: column name (``weather``, ``town``, ``camera``...) -> N group values; a frame whose value
            is '' has no cell in that column (the grouping does not apply to it).
        min_frames: cells smaller than this are reported but never named weakest (too noisy).
        episodes: N episode ids (optional): each cell then counts the episodes its frames come from.
    Returns:
        ``{"overall": cell, "groups": {column: {value: cell}}, "weakest": [{"group", "value", ...cell}]}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(probs).argmax(1)
    eps = None if episodes is None else np.asarray(episodes).astype(str)
    out = {"overall": _cell(labels, pred, classes, eps), "groups": {}, "min_frames": min_frames}
    cells = []
    for column, values in groups.items():
        values = np.asarray(values).astype(str)
        table = {}
        for v in sorted(set(values.tolist()) - {""}):
            m = values == v
            table[v] = _cell(labels[m], pred[m], classes, None if eps is None else eps[m])
            if table[v]["frames"] >= min_frames:
                cells.append({"group": column, "value": v, **table[v]})
        out["groups"][column] = table
    cells.sort(key=lambda c: (c["balanced_accuracy"], c["accuracy"]))
    out["weakest"] = cells[:n_weakest]
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _from(cell: dict) -> str:
    return f" from {cell['episodes']} episode{'s' if cell['episodes'] != 1 else ''}" if "episodes" in cell else ""


def robustness_markdown(report: dict, classes: Sequence[str], title: str = "Robustness report") -> str:
    """The report as Markdown: overall line, confusion matrix, weakest cells, one table per group."""
    o = report["overall"]
    episodes = "episodes" in o
    lines = [f"# {title}", "",
             f"{o['frames']} frames{_from(o)}: accuracy {_pct(o['accuracy'])} %, balanced accuracy "
             f"{_pct(o['balanced_accuracy'])} %, " + ", ".join(f"recall {c} {_pct(o['recall'][c])} %" for c in classes),
             "", "Confusion matrix (rows true, columns predicted):", "",
             "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, o["confusion_matrix"])]
    lines += ["", f"Weakest cells (at least {report['min_frames']} frames, by balanced accuracy):", ""]
    if report["weakest"]:
        lines += [f"- {w['group']} = {w['value']}: balanced accuracy {_pct(w['balanced_accuracy'])} %, accuracy "
                  f"{_pct(w['accuracy'])} % ({w['frames']} frames{_from(w)}; "
                  + ", ".join(f"recall {c} {_pct(w['recall'][c])}" for c in classes) + ")" for w in report["weakest"]]
    else:
        lines.append("- none with enough frames")
    few = [f"{w['group']} = {w['value']}" for w in report["weakest"] if w.get("episodes", FEW_EPISODES) < FEW_EPISODES]
    if few:
        lines += ["", f"Careful: {', '.join(few)} come{'s' if len(few) == 1 else ''} from fewer than {FEW_EPISODES} "
                  "episodes, so the places those drives went weigh as much as the group itself. To measure weather "
                  "apart from place, collect the test set with `--weather all --weather-every 1` (a new preset "
                  "every saved frame)."]
    head = ("| value | frames | " + ("episodes | " if episodes else "") + "accuracy % | balanced % | "
            + " | ".join(f"recall {c} %" for c in classes) + " |")
    for column, table in report["groups"].items():
        lines += ["", f"## per {column}", "", head, "|---" * (4 + episodes + len(classes)) + "|"]
        lines += [f"| {v} | {c['frames']} | " + (f"{c['episodes']} | " if episodes else "")
                  + f"{_pct(c['accuracy'])} | {_pct(c['balanced_accuracy'])} | "
                  + " | ".join(_pct(c["recall"][k]) for k in classes) + " |" for v, c in table.items()]
    return "\n".join(lines) + "\n"

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

Each cell also carries a 95 % (Wilson) interval of its accuracy, and each grouping the worst accuracy
its cells would show *by chance alone* if every cell were as accurate as the group's pooled frames
(binomial draws at the cells' sizes). With 22 presets of 100 frames and 96.6 % pooled, the worst
preset lands near 93 % with no weak preset at all: a worst-cell target has to be read against that.
Frames of one episode are not independent, so both figures are, if anything, optimistic.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


FEW_EPISODES = 5
"""A cell whose frames come from fewer episodes than this is flagged (see the module docstring)."""
CHANCE_DRAWS = 10000
"""Binomial draws behind :func:`chance_worst` (seeded: the report is reproducible)."""


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def chance_worst(sizes: Sequence[int], accuracy: float, draws: int = CHANCE_DRAWS, seed: int = 0) -> dict:
    """The lowest accuracy among cells of ``sizes`` frames that are all exactly ``accuracy`` accurate:
    median and 5-95 % range over binomial draws. What the worst cell shows with no weak cell at all."""
    sizes = np.asarray(sizes, dtype=np.int64)
    worst = (np.random.default_rng(seed).binomial(sizes[None, :], accuracy, (draws, len(sizes))) / sizes).min(1)
    return {"cells": int(len(sizes)), "pooled_accuracy": float(accuracy), "median": float(np.median(worst)),
            "p05": float(np.percentile(worst, 5)), "p95": float(np.percentile(worst, 95))}


def _cell(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str], episodes: np.ndarray | None = None) -> dict:
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    recalls = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    present = [r for r in recalls.values() if r is not None]
    correct = int((labels == pred).sum())
    cell = {"frames": int(len(labels)), "accuracy": float(correct / max(len(labels), 1)),
            "accuracy_ci95": list(wilson_interval(correct, len(labels))),
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
        ``{"overall": cell, "groups": {column: {value: cell}}, "weakest": [{"group", "value", ...cell}],
        "chance_worst": {column: chance_worst(...)}}`` (the last for columns with 2+ cells of ``min_frames``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(probs).argmax(1)
    eps = None if episodes is None else np.asarray(episodes).astype(str)
    out = {"overall": _cell(labels, pred, classes, eps), "groups": {}, "min_frames": min_frames, "chance_worst": {}}
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
        big = [c for c in table.values() if c["frames"] >= min_frames]
        if len(big) >= 2:
            pooled = sum(c["accuracy"] * c["frames"] for c in big) / sum(c["frames"] for c in big)
            out["chance_worst"][column] = chance_worst([c["frames"] for c in big], pooled)
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
    for column, ch in report.get("chance_worst", {}).items():
        worst = min(c["accuracy"] for c in report["groups"][column].values() if c["frames"] >= report["min_frames"])
        lines += ["", f"Worst {column} by chance: if each of its {ch['cells']} cells were as accurate as their pooled "
                  f"{_pct(ch['pooled_accuracy'])} %, the worst would still read {_pct(ch['median'])} % "
                  f"({_pct(ch['p05'])}-{_pct(ch['p95'])} %, 5-95 % of {CHANCE_DRAWS} binomial draws); measured "
                  f"{_pct(worst)} %."]
    few = [f"{w['group']} = {w['value']}" for w in report["weakest"] if w.get("episodes", FEW_EPISODES) < FEW_EPISODES]
    if few:
        lines += ["", f"Careful: {', '.join(few)} come{'s' if len(few) == 1 else ''} from fewer than {FEW_EPISODES} "
                  "episodes, so the places those drives went weigh as much as the group itself. To measure weather "
                  "apart from place, collect the test set with `--weather all --weather-every 1` (a new preset "
                  "every saved frame)."]
    head = ("| value | frames | " + ("episodes | " if episodes else "") + "accuracy % | balanced % | "
            + " | ".join(f"recall {c} %" for c in classes) + " | accuracy 95 % CI |")
    for column, table in report["groups"].items():
        lines += ["", f"## per {column}", "", head, "|---" * (5 + episodes + len(classes)) + "|"]
        lines += [f"| {v} | {c['frames']} | " + (f"{c['episodes']} | " if episodes else "")
                  + f"{_pct(c['accuracy'])} | {_pct(c['balanced_accuracy'])} | "
                  + " | ".join(_pct(c["recall"][k]) for k in classes)
                  + " | " + "-".join(_pct(v) for v in c["accuracy_ci95"]) + " |" for v, c in table.items()]
    return "\n".join(lines) + "\n"

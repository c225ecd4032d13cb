"""The run-directory figures: learning curves, confusion matrices, a grid of predictions."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _optional_figure(fn):
    """Skip a figure with one warning when matplotlib is not installed (e.g. a bare GPU box): metrics still land."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log.warning("matplotlib is not installed: %s skipped", fn.__name__)
            return None
        return fn(*args, **kwargs)
    return wrapper


class _NullWriter:
    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def summary_writer(path: str | Path):
    """TensorBoard SummaryWriter at ``path``, or a writer that drops everything when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs (history.csv and metrics.json still written)")
        return _NullWriter()
    return SummaryWriter(str(path))


@_optional_figure
def plot_curves(history: Sequence[dict], path: str | Path, stage2_epoch: int | None = None,
                best_epoch: int | None = None) -> None:
    """Train vs validation loss and accuracy per epoch; dashed lines mark unfreezing and the best epoch."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", label="validation")
        if stage2_epoch is not None:
            ax.axvline(stage2_epoch - 0.5, color="grey", ls="--", lw=1, label="backbone unfrozen")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="green", ls=":", lw=1, label="best (val loss)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@_optional_figure
def plot_confusion(matrices: dict[str, list[list[int]]], classes: Sequence[str], path: str | Path) -> None:
    """One panel per split (e.g. val, test): counts and row-normalised share."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    for ax, (name, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (acc {np.trace(cm) / max(cm.sum(), 1):.1%})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@_optional_figure
def plot_predictions(frames: Sequence[np.ndarray], labels: Sequence[int], probs: np.ndarray,
                     classes: Sequence[str], path: str | Path, captions: Sequence[str] | None = None,
                     cols: int = 6) -> None:
    """Grid of uint8 RGB frames titled ``true / pred p=..``; mistakes in red."""
    plt = _plt()
    n = len(frames)
    if n == 0:
        log.warning("no frames to plot for %s", path)
        return
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        pred = int(np.argmax(probs[k]))
        ax.imshow(frames[k])
        title = f"true {classes[labels[k]]}\npred {classes[pred]} p={probs[k][pred]:.2f}"
        if captions is not None:
            title += f"\n{captions[k]}"
        ax.set_title(title, fontsize=8, color="black" if pred == labels[k] else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pick_examples(labels: np.ndarray, probs: np.ndarray, n: int = 24, seed: int = 0) -> np.ndarray:
    """Indices to show: up to half mistakes (most confident first), the rest random correct frames."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][: n // 2]
    right = np.flatnonzero(pred == labels)
    right = np.random.default_rng(seed).permutation(right)[: n - len(wrong)]
    return np.concatenate([wrong, right]).astype(np.int64)


def plot_reliability(report: dict, path: str | Path) -> None:
    """Reliability diagram before/after temperature scaling (``training.calibration.calibration_report``).

    Bars: accuracy per confidence bin; the diagonal is perfect calibration; titles give ECE and T.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, key, title in ((axes[0], "before", "raw softmax"),
                           (axes[1], "after", f"temperature T={report['temperature']:.3f}")):
        r = report[f"reliability_{key}"]
        edges = np.asarray(r["edges"])
        width = np.diff(edges)
        acc = np.array([a if a is not None else 0.0 for a in r["accuracy"]])
        conf = np.array([c if c is not None else 0.0 for c in r["confidence"]])
        filled = np.array(r["count"]) > 0
        ax.bar(edges[:-1][filled], acc[filled], width=width[filled], align="edge", edgecolor="k", alpha=0.7,
               label="accuracy")
        ax.bar(edges[:-1][filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
               color="red", alpha=0.25, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(f"{title}: ECE {report[f'ece_{key}']:.4f}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    axes[0].set_ylabel(f"accuracy ({report['frames']} frames, {len(r['count'])} bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@_optional_figure
def plot_turn_past(past_m: np.ndarray, wrong: np.ndarray, clear_wrong: float | None, path: str | Path,
                   bin_m: float = 2.5) -> None:
    """Error rate of the straight frames whose road turns just beyond the label's lookahead L, by how
    many metres past L the turn reaches the curve threshold (``training.horizon.road_ahead``): how
    much of what is left is the label's boundary itself. ``clear_wrong``: the error rate of straights
    whose road stays straight (a dashed line), for scale.
    """
    plt = _plt()
    past_m = np.asarray(past_m, float)
    wrong = np.asarray(wrong, bool)
    edges = np.arange(0.0, max(float(past_m.max()), bin_m) + bin_m, bin_m)
    k = np.clip(np.digitize(past_m, edges) - 1, 0, len(edges) - 2)
    count = np.bincount(k, minlength=len(edges) - 1)
    errors = np.bincount(k, weights=wrong.astype(float), minlength=len(edges) - 1)
    rate = np.divide(errors, count, out=np.zeros_like(errors), where=count > 0)
    fig, ax = plt.subplots(figsize=(7, 4))
    filled = count > 0
    ax.bar(edges[:-1][filled], 100 * rate[filled], width=bin_m, align="edge", edgecolor="k", alpha=0.7,
           label="straight, turn beyond L")
    for x, r, n, e in zip(edges[:-1][filled], rate[filled], count[filled], errors[filled]):
        ax.annotate(f"{int(e)}/{n}", (x + bin_m / 2, 100 * r), ha="center", va="bottom", fontsize=8)
    if clear_wrong is not None:
        ax.axhline(100 * clear_wrong, color="k", ls="--", lw=1, label="straight, clear road")
    ax.set_xlabel("metres past the label's lookahead L where the road's turn reaches the curve threshold")
    ax.set_ylabel("frames wrong, %")
    ax.set_title(f"Straight frames with a turn just beyond L: {int(wrong.sum())} of {len(wrong)} wrong")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@_optional_figure
def plot_group_accuracy(report: dict, group: str, path: str | Path) -> None:
    """Accuracy of every cell of one robustness grouping (e.g. the weather presets), worst at the top, with
    its 95 % Wilson interval, the pooled accuracy, and the band where the worst cell would fall by chance if
    every cell were as accurate as the pooled frames (``training.robustness.chance_worst``): a bar left
    of that band is a genuinely weak cell, one inside it may be bad luck."""
    plt = _plt()
    cells = report["groups"][group]
    names = sorted(cells, key=lambda k: (cells[k]["accuracy"], k))
    acc = np.array([100 * cells[k]["accuracy"] for k in names])
    lo = np.array([100 * cells[k]["accuracy_ci95"][0] for k in names])
    hi = np.array([100 * cells[k]["accuracy_ci95"][1] for k in names])
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * len(names)))
    y = np.arange(len(names))[::-1]
    ax.barh(y, acc, color="tab:blue", alpha=0.6)
    err = np.clip([acc - lo, hi - acc], 0.0, None)      # a 100 % cell's bound can round a hair under it
    ax.errorbar(acc, y, xerr=err, fmt="none", ecolor="k", capsize=2, lw=1, label="95 % interval")
    chance = report.get("chance_worst", {}).get(group)
    if chance:
        ax.axvspan(100 * chance["p05"], 100 * chance["p95"], color="tab:orange", alpha=0.25,
                   label="worst cell by chance (5-95 %)")
    ax.axvline(100 * report["overall"]["accuracy"], color="k", ls="--", lw=1, label="pooled")
    ax.set_yticks(y, [f"{k} ({cells[k]['frames']})" for k in names], fontsize=8)
    ax.set_xlim(max(0.0, float(lo.min()) - 3), 100)
    ax.set_xlabel("accuracy, %")
    ax.set_title(f"Accuracy per {group} (frames)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.5 / (1.2 + 0.28 * len(names))), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

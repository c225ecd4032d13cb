"""Temperature scaling (Guo et al. 2017): make p(curve) mean what it says.

The soft gate weighs the experts by p(curve), so a model that says 0.99 should be right 99 % of
the time. One scalar T > 0 is fitted on the validation split's logits by minimising the NLL of
``softmax(logits / T)`` (LBFGS over log T, so T stays positive); argmax, hence accuracy, is
unchanged. T is stored in the checkpoint ``config["temperature"]``, exported into the ONNX metadata
and applied by ``perception.classifier`` when it turns logits into probabilities.

Re-calibrate an existing checkpoint on a validation dataset (never on the evaluation-only sets), or on
the validation split its training run saved; ``--tta hflip`` switches the model to flip test-time
augmentation and fits T for it (``--out`` writes a copy instead of rewriting the checkpoint)::

    python -m training.calibration --checkpoint runs/train/x/weights/best.pt --data data/town03
    python -m training.calibration --checkpoint runs/train/x/weights/best.pt --split runs/train/x/split.json \
        --tta hflip --out runs/train/x/weights/best_hflip.pt
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.preprocess import TTA_CHOICES, check_tta

log = logging.getLogger(__name__)

ECE_BINS = 15


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 minimising the mean NLL of ``softmax(logits / T)`` against ``labels``.

    Args:
        logits: N x C raw model outputs.
        labels: N integer class indices.
    Raises:
        ValueError: empty or mismatched inputs.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if z.ndim != 2 or len(z) == 0 or len(z) != len(y):
        raise ValueError(f"fit_temperature needs N x C logits and N labels, got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        raise ValueError("temperature fit diverged (non-finite T)")
    return float(np.clip(t, 1e-3, 1e3))  # separable data drives T -> 0; keep it a usable number


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Confidence (max probability) histogram in ``n_bins`` equal-width bins over [0, 1].

    Returns ``{"edges", "confidence", "accuracy", "count"}`` (lists; empty bins have None means).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)  # bin k holds (e_k, e_k+1]
    out = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for k in range(n_bins):
        m = which == k
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin share of frames) * |accuracy - mean confidence|, max-probability bins."""
    r = reliability(probs, labels, n_bins)
    n = sum(r["count"])
    if n == 0:
        raise ValueError("expected_calibration_error of an empty set")
    return float(sum(c / n * abs(a - p) for c, a, p in zip(r["count"], r["accuracy"], r["confidence"]) if c))


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float | None = None) -> dict:
    """Fit T (unless given) and report NLL/ECE before and after, plus both reliability tables."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    t = fit_temperature(logits, labels) if temperature is None else float(temperature)
    before, after = softmax(logits), softmax(logits, t)
    nll = lambda p: float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1)).mean())  # noqa: E731
    return {"temperature": t, "frames": int(len(labels)), "bins": ECE_BINS,
            "ece_before": expected_calibration_error(before, labels), "ece_after": expected_calibration_error(after, labels),
            "nll_before": nll(before), "nll_after": nll(after),
            "reliability_before": reliability(before, labels), "reliability_after": reliability(after, labels)}


# ------------------------------------------------------------------------------------------ CLI

@dataclass
class CalibrateConfig:
    checkpoint: str
    data: tuple[str, ...] = ()      # validation datasets (every frame); empty with ``split``: the run's own data
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    cache_dir: str | None = None
    split: str | None = None        # a training run's split.json: fit on its "val" episodes only
    tta: str | None = None          # set the checkpoint's test-time augmentation (None: keep it)
    out: str | None = None          # write here instead of rewriting ``checkpoint``

    def __post_init__(self):
        self.data = tuple(str(d) for d in self.data)
        if self.tta is not None:
            check_tta(self.tta)
        if not self.data and self.split is None:
            raise ValueError("give the validation data: --data DIR [DIR ...] or --split RUN/split.json")


def calibrate_checkpoint(cfg: CalibrateConfig) -> dict:
    """Fit T on every frame of ``cfg.data`` (a validation set), or on the val episodes of ``cfg.split``, and
    write it (with ``cfg.tta``, if given) into the checkpoint's config."""
    from torch import nn

    from datasets.dataset import DatasetError, FrameDataset
    from datasets.presets import ClassificationPresetEval
    from datasets.splits import split_from_json
    from training import ddp
    from training.checkpoint import crop_rows_of, read_checkpoint, load_checkpoint, save_checkpoint, tta_of
    from training.models import base_model, with_tta
    from training.train import Runtime, evaluate, fork_safe_cv2, make_loader, prepare_data, resolve_device

    device = resolve_device(cfg.device)
    model, mcfg = load_checkpoint(cfg.checkpoint, device)
    tta = cfg.tta or tta_of(mcfg)
    model = with_tta(base_model(model), tta)
    data, saved = cfg.data, None
    if cfg.split is not None:
        try:
            saved = json.loads(Path(cfg.split).read_text())
            data = data or tuple(saved["data"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"--split {cfg.split}: not a training run's split.json ({type(e).__name__}: {e})") from None
    rt = Runtime(device=device, info=ddp.DistInfo(), progress=False)
    with fork_safe_cv2():
        prepared = prepare_data(data, int(mcfg["img_size"]), cfg.cache_dir, rt.info, False, crop_rows_of(mcfg))
        table = prepared.table
        if saved is not None:
            table = table.subset(split_from_json(saved, table).indices["val"])
            if len(table) == 0:
                raise DatasetError(f"--split {cfg.split}: none of its val episodes are in {', '.join(data)}")
        ds = FrameDataset(prepared.cache, table, ClassificationPresetEval(mean=mcfg["mean"], std=mcfg["std"]))
        loader = make_loader(ds, cfg.batch_size, cfg.workers, device, train=False, info=rt.info, seed=0)
        result = evaluate(model, nn.CrossEntropyLoss(), loader, rt, desc="calibrate")
    report = calibration_report(result["logits"], result["labels"])
    ckpt = read_checkpoint(cfg.checkpoint)
    config = {**ckpt["config"], "temperature": report["temperature"], "tta": tta}
    extra = {k: v for k, v in ckpt.items() if k not in ("state_dict", "config", "epoch", "metrics")}
    metrics = {**ckpt.get("metrics", {}), "calibration": {k: report[k] for k in
                                                         ("temperature", "ece_before", "ece_after", "frames")}}
    save_checkpoint(cfg.out or cfg.checkpoint, model, config, ckpt.get("epoch", 0), metrics, **extra)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fit a softmax temperature on a validation dataset and store it in a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a .pt written by training.train (rewritten in place unless --out)")
    p.add_argument("--data", nargs="+", default=(), metavar="DIR",
                   help="validation dataset directories (every frame is used)")
    p.add_argument("--split", default=None, metavar="SPLIT_JSON",
                   help="a training run's split.json: fit on its val episodes (of --data, default the run's data)")
    p.add_argument("--tta", default=None, choices=TTA_CHOICES,
                   help="set the model's test-time augmentation (default: keep the checkpoint's)")
    p.add_argument("--out", default=None, help="write the calibrated checkpoint here (default: rewrite --checkpoint)")
    p.add_argument("--device", default="auto", help="compute device (auto, cpu, cuda)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--cache-dir", default=None, help="frame cache directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from datasets.dataset import DatasetError
    try:
        r = calibrate_checkpoint(CalibrateConfig(args.checkpoint, tuple(args.data), device=args.device,
                                                 workers=args.workers, cache_dir=args.cache_dir, split=args.split,
                                                 tta=args.tta, out=args.out))
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"temperature {r['temperature']:.4f}; ECE ({ECE_BINS} bins) {r['ece_before']:.4f} -> {r['ece_after']:.4f} "
          f"on {r['frames']} frames; written to {args.out or args.checkpoint}")


if __name__ == "__main__":
    main()

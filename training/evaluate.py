"""Evaluate a trained checkpoint on any dataset: the same metrics.json and plots as training writes.

Example::

    python -m training.evaluate --checkpoint runs/train/efficientnet_b0-20250101-120000/weights/best.pt \\
        --data data/town05 --out runs/evaluate/town05

Frames go through the checkpoint's own image size and normalisation (the uint8 cache made by
``datasets.preprocess.to_rgb_resized``, then ``normalize``), i.e. exactly the training eval path.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from datasets.dataset import FrameDataset, check_hygiene
from datasets.io_safety import check_output_path, cli_errors, write_json_atomic
from datasets.presets import ClassificationPresetEval
from training import ddp
from training.checkpoint import load_checkpoint
from training.train import (DEVICES, evaluate, fork_safe_cv2, make_loader, prepare_data, resolve_device,
                            split_metrics, write_eval_artifacts)

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    checkpoint: str
    data: tuple[str, ...]
    out: str | None = None
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    cache_dir: str | None = None
    progress: bool = True
    strict: bool = False

    def __post_init__(self):
        self.data = tuple(str(d) for d in self.data)
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r}: unknown; valid: {', '.join(DEVICES)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: must be >= 1")
        check_output_path(self.out, "--out", is_dir=True)
        check_output_path(self.cache_dir, "--cache-dir", is_dir=True)


def evaluate_checkpoint(cfg: EvalConfig) -> tuple[Path, dict]:
    """Run ``cfg.checkpoint`` over every usable frame of ``cfg.data``; writes and returns the metrics.

    ``metrics.json`` holds ``{"checkpoint", "data": {...}, "eval": <same keys as training's val/test>}``.
    """
    with fork_safe_cv2():
        return _evaluate_checkpoint(cfg)


def _evaluate_checkpoint(cfg: EvalConfig) -> tuple[Path, dict]:
    device = resolve_device(cfg.device)
    model, mcfg = load_checkpoint(cfg.checkpoint, device)
    if list(mcfg["classes"]) != ["curve", "straight"]:
        log.warning("checkpoint classes %s differ from the dataset schema", mcfg["classes"])
    info = ddp.DistInfo()
    table, cache, n_corrupt = prepare_data(cfg.data, int(mcfg["img_size"]), cfg.cache_dir, info, cfg.progress)
    table, hygiene = check_hygiene(table, cache, strict=cfg.strict)
    ds = FrameDataset(cache, table, ClassificationPresetEval(mean=mcfg["mean"], std=mcfg["std"]))
    loader = make_loader(ds, cfg.batch_size, cfg.workers, device, train=False, info=info, seed=0)
    result = evaluate(model, nn.CrossEntropyLoss(), loader, device, info=info, progress=cfg.progress, desc="eval")
    out = Path(cfg.out or Path("runs") / "evaluate" / f"{Path(cfg.checkpoint).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"checkpoint": str(cfg.checkpoint), "arch": mcfg["arch"], "img_size": mcfg["img_size"],
               "data": {"dirs": list(cfg.data), "frames": len(table), "corrupt_skipped": n_corrupt,
                        "towns": table.towns(), "duplicates_dropped": hygiene.duplicates,
                        "constant_images": hygiene.constant, "missing_dataset_json": hygiene.missing_info},
               "eval": split_metrics(result, table)}
    write_json_atomic(out / "metrics.json", metrics)
    write_eval_artifacts(out, {"eval": result}, {"eval": ds}, seed=0)
    return out, metrics


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = EvalConfig("", ())
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a dataset (metrics.json + plots)",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pt written by training.train (e.g. weights/best.pt)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="dataset directories")
    p.add_argument("--out", default=None, help="output directory (default runs/evaluate/<ckpt>-<timestamp>)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="compute device")
    p.add_argument("--cache-dir", default=None, help="where to keep the uint8 frame cache (default <data>/cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    p.add_argument("--strict", action="store_true",
                   help="duplicate rows, constant (all black/white) images or a missing dataset.json are errors")
    p.add_argument("-v", "--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    debug = args.__dict__.pop("debug")
    with cli_errors(debug=debug, prog="evaluate"):
        cfg = EvalConfig(**vars(args))
        out, metrics = evaluate_checkpoint(cfg)
    m = metrics["eval"]
    towns = ", ".join(f"{t} {v['accuracy']:.3f}" for t, v in m["accuracy_per_town"].items())
    print(f"accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, ROC-AUC {m['roc_auc']} ({towns})")
    print(f"metrics: {out / 'metrics.json'}")


if __name__ == "__main__":
    main()

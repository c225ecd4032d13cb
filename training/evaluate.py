"""Evaluate a trained checkpoint on any dataset: the same metrics.json and plots as training writes.

Example::

    python -m training.evaluate --checkpoint runs/train/efficientnet_b0-20250101-120000/weights/best.pt \\
        --data data/town05 --out runs/evaluate/town05

Frames go through the checkpoint's own image size and normalisation (the uint8 cache made by
``datasets.preprocess.to_rgb_resized``, then ``normalize``), i.e. exactly the training eval path.

The checkpoint's camera/label contract is reported (``metrics.json`` ``contract``) and compared with
each dataset's ``dataset.json``: a difference (another camera, another label lookahead) is one
warning line, never a refusal: evaluating on other cameras, e.g. real CARLA frames, is legitimate.
Probabilities use the checkpoint's fitted temperature (``config["temperature"]``, 1 if absent), as
inference does; ``eval.ece_uncalibrated`` keeps the raw-softmax ECE beside the calibrated ``eval.ece``.

Besides ``metrics.json`` and the plots, the run writes ``robustness.json`` / ``robustness.md`` (also
printed): accuracy, balanced accuracy and both recalls per weather preset, per town and per camera
variation (the manifest's ``camera_variant`` column where the collector recorded one, else the
camera of each dataset's ``dataset.json``), per *road ahead* where the datasets keep their routes
(curve frames, straight frames whose road stays straight for twice the label lookahead, and those
whose road turns just beyond it: see :mod:`training.horizon`), per *turn past L* for the last kind
(how many metres past the lookahead the turn reaches the curve threshold; ``turn_past_l.png`` plots
their error rate by those metres), the confusion matrix, and the weakest cells named.
``predictions.csv`` has one row per frame, confident mistakes first.
A read-only dataset folder needs no flag: its frame cache goes to the user's cache directory.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from datasets.dataset import DatasetError, FrameDataset, FrameTable, check_hygiene, read_info, read_manifest
from datasets.io_safety import check_output_path, cli_errors, write_json_atomic, write_text_atomic
from datasets.presets import ClassificationPresetEval
from training import ddp
from training.calibration import calibration_report, expected_calibration_error, softmax
from training.checkpoint import crop_rows_of, load_checkpoint, tta_of
from datasets.schema import Contract
from training.train import (DEVICES, Runtime, evaluate, fork_safe_cv2, make_loader, prepare_data, resolve_device,
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
    contract = contract_report(Contract.from_json(mcfg.get("contract")), cfg.data)
    rt = Runtime(device=device, info=ddp.DistInfo(), progress=cfg.progress)
    prepared = prepare_data(cfg.data, int(mcfg["img_size"]), cfg.cache_dir, rt.info, cfg.progress,
                            crop_rows_of(mcfg))
    table, hygiene = check_hygiene(prepared.table, prepared.cache, strict=cfg.strict)
    ds = FrameDataset(prepared.cache, table, ClassificationPresetEval(mean=mcfg["mean"], std=mcfg["std"]))
    loader = make_loader(ds, cfg.batch_size, cfg.workers, device, train=False, info=rt.info, seed=0)
    result = evaluate(model, nn.CrossEntropyLoss(), loader, rt, desc="eval")
    temperature = float(mcfg.get("temperature", 1.0))
    raw_probs = result["probs"]
    result["probs"] = softmax(result["logits"], temperature).astype(np.float32)
    out = Path(cfg.out or Path("runs") / "evaluate" / f"{Path(cfg.checkpoint).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"checkpoint": str(cfg.checkpoint), "arch": mcfg["arch"], "img_size": mcfg["img_size"],
               "crop_rows": list(crop_rows_of(mcfg)), "tta": tta_of(mcfg),
               "contract": contract,
               "data": {"dirs": list(cfg.data), "frames": len(table), "corrupt_skipped": prepared.corrupt_skipped,
                        "route_dependent_skipped": prepared.route_dependent_skipped, "towns": table.towns(),
                        "duplicates_dropped": hygiene.duplicates, "constant_images": hygiene.constant,
                        "missing_dataset_json": hygiene.missing_info},
               "temperature": temperature, "eval": split_metrics(result, table)}
    metrics["eval"]["ece_uncalibrated"] = expected_calibration_error(raw_probs, result["labels"])
    write_json_atomic(out / "metrics.json", metrics)
    write_eval_artifacts(out, {"eval": result}, {"eval": ds}, seed=0)
    from training.plots import plot_reliability
    plot_reliability(calibration_report(result["logits"], result["labels"], temperature), out / "reliability.png")
    write_robustness(out, result, table, f"Robustness of {cfg.checkpoint} on {', '.join(cfg.data)}")
    return out, metrics


_CLASSIFIER_SAME_POLICIES = {"flag", "skip"}
"""Junction policies a classifier cannot tell apart: flagged frames are dropped, skipped ones never saved."""


def contract_differences(model: Contract, info: dict) -> list[str]:
    """``"camera.fov 110.0 (model) vs 90.0 (data)"`` for each contract field a ``dataset.json`` records
    differently. Fields the dataset leaves out or null (hand-labelled sets often do not know their fov
    or mount) are not differences; extra dataset fields (image_format, notes) are ignored.
    """
    diffs = []
    for section, fields_ in model.to_json().items():
        recorded = info.get(section) or {}
        for name, value in _flatten(fields_, f"{section}."):
            have = _lookup(recorded, name.split(".")[1:])
            if name == "label.junction_policy" and {have, value} <= _CLASSIFIER_SAME_POLICIES:
                continue
            if have is not None and have != value:
                diffs.append(f"{name} {value!r} (model) vs {have!r} (data)")
    return diffs


def _flatten(d: dict, prefix: str):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _lookup(d, path: list[str]):
    for part in path:
        d = d.get(part) if isinstance(d, dict) else None
    return d


def contract_report(model: Contract | None, data_dirs) -> dict:
    """``metrics["contract"]``: the model's contract and, per dataset, how its recorded one differs.

    Logs the model's camera and one warning line per dataset that differs (reported, not refused).
    """
    if model is None:
        log.info("checkpoint records no camera/label contract (trained before it existed)")
        return {"model": None, "differences": {}}
    c = model.camera
    log.info("model contract: camera %dx%d fov %g, label lookahead %g m", c.width, c.height, c.fov,
             model.label.lookahead_m)
    differences = {}
    for d in data_dirs:
        diffs = contract_differences(model, read_info(d))
        if diffs:
            differences[str(d)] = diffs
            log.warning("%s was recorded under another camera/label contract than the model: %s", d, ", ".join(diffs))
    return {"model": model.to_json(), "differences": differences}


def _randomization_variants(root: Path) -> dict[str, str]:
    """image -> camera_variant from a domain-randomised dataset's randomization.jsonl ({} when absent)."""
    from datasets.schema import RANDOMIZATION_NAME
    path = Path(root) / RANDOMIZATION_NAME
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:   # a line cut by a crash
            continue
        if "image" in rec and "camera_variant" in rec:
            out[rec["image"]] = str(rec["camera_variant"])
    return out


def camera_variants(table: FrameTable) -> np.ndarray:
    """Camera variation of every frame: the manifest's ``camera_variant`` column (written under domain
    randomisation), else ``WxH fovF`` of the dataset's recorded camera ('unknown' when not recorded)."""
    out = np.empty(len(table), dtype=object)
    for s, root in enumerate(table.roots):
        m = table.source == s
        rows = read_manifest(root)
        drawn = _randomization_variants(root)
        if drawn:
            out[m] = [drawn.get(rows[r]["image"], "unrecorded") for r in table.row[m]]
            continue
        if rows and "camera_variant" in rows[0]:
            out[m] = [rows[r]["camera_variant"] for r in table.row[m]]
            continue
        cam = read_info(root).get("camera") or {}
        fov = cam.get("fov")
        out[m] = f"{cam.get('width', '?')}x{cam.get('height', '?')} fov{fov if fov is not None else '?'}" if cam \
            else "unknown"
    return out


def write_robustness(out: Path, result: dict, table: FrameTable, title: str) -> dict:
    """robustness.json + robustness.md and predictions.csv for one evaluated table (see
    :mod:`training.robustness`, :mod:`training.horizon`)."""
    from datasets.schema import CLASSES
    from training.horizon import CLEAR, road_ahead, road_ahead_groups, turn_past_bands
    from training.plots import plot_group_accuracy, plot_turn_past
    from training.robustness import robustness_markdown, robustness_report

    sub = table.subset(result["index"])
    groups = {"weather": sub.weather, "town": sub.town, "camera": camera_variants(sub)}
    ahead_deg, past_m = road_ahead(sub)
    turn = ~np.isnan(past_m)
    if not np.isnan(ahead_deg).all():     # datasets that keep their routes: the curve beyond the label's horizon
        groups["road ahead"] = road_ahead_groups(sub, ahead_deg)
    if turn.any():                        # and how far past L it turns ('' = not such a frame: no cell)
        groups["turn past L"] = turn_past_bands(past_m)
        wrong = result["probs"].argmax(1) != result["labels"]
        clear = groups["road ahead"] == CLEAR
        plot_turn_past(past_m[turn], wrong[turn], float(wrong[clear].mean()) if clear.any() else None,
                       out / "turn_past_l.png")
    report = robustness_report(result["labels"], result["probs"], CLASSES, groups, episodes=sub.episode_keys())
    write_json_atomic(out / "robustness.json", report)
    (out / "robustness.md").write_text(robustness_markdown(report, CLASSES, title))
    if len(report["groups"].get("weather", {})) > 1:
        plot_group_accuracy(report, "weather", out / "weather.png")
    write_predictions(out / "predictions.csv", result, sub, groups, ahead_deg, past_m)
    return report


def write_predictions(path: Path, result: dict, sub: FrameTable, groups: dict, ahead_deg: np.ndarray,
                      past_m: np.ndarray) -> None:
    """One row per evaluated frame, worst first (wrong and confident at the top): where to look first."""
    import csv
    import io

    from datasets.schema import CLASSES
    probs, labels = result["probs"], result["labels"]
    pred = probs.argmax(1)
    confidence_wrong = np.where(pred != labels, probs.max(1), -probs.max(1))
    order = np.argsort(-confidence_wrong, kind="stable")
    ci = CLASSES.index("curve")
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["dataset", "image", "label", "pred", "correct", "p_curve", *(g.replace(" ", "_") for g in groups),
                "road_ahead_deg", "turn_past_l_m"])
    for k in order.tolist():
        w.writerow([str(sub.roots[int(sub.source[k])]), str(sub.image[k]), CLASSES[int(labels[k])],
                    CLASSES[int(pred[k])], int(pred[k] == labels[k]), f"{float(probs[k, ci]):.4f}",
                    *(str(v[k]) for v in groups.values()),
                    "" if np.isnan(ahead_deg[k]) else f"{float(ahead_deg[k]):.2f}",
                    "" if np.isnan(past_m[k]) else f"{float(past_m[k]):.2f}"])
    write_text_atomic(path, buf.getvalue())


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
    print((out / "robustness.md").read_text())
    towns = ", ".join(f"{t} {v['accuracy']:.3f}" for t, v in m["accuracy_per_town"].items())
    print(f"accuracy {m['accuracy']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}, macro F1 "
          f"{m['macro_f1']:.4f}, ROC-AUC {m['roc_auc']}, ECE {m['ece']:.4f} (T={metrics['temperature']:.3f}; "
          f"uncalibrated {m['ece_uncalibrated']:.4f}) ({towns})")
    print(f"metrics: {out / 'metrics.json'}; robustness: {out / 'robustness.md'}")


if __name__ == "__main__":
    main()

"""Measure which ONNX Runtime CPU configuration (provider, precision, threads) ``precision="auto"`` uses
for a model here, and cache it.

Usage::

    python -m perception.tune --model m.onnx                       # drawn road frames, 200 of them, 1.5 s
    python -m perception.tune --model m.onnx --frames data/town02 --seconds 3 --threads 2

Prints every candidate (median batch-1 inference, class agreement with FP32) and the one chosen,
and writes the decision where :class:`perception.classifier.CurveClassifier` finds it. Loading a
model without one measures a shorter version at first load; ``perception.export`` runs this too.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from perception import cpu_tune
from perception.formats import format_for_path


@dataclass
class TuneConfig:
    """Attributes: ONNX model; recorded reference frames dir (None = drawn); reference frame count;
    timing seconds; intra-op threads (None = the default); cache root (None = the default)."""
    model: Path
    frames: Path | None = None
    n_frames: int = cpu_tune.FULL.frames
    seconds: float = cpu_tune.FULL.seconds
    threads: int | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        if format_for_path(self.model).arg != "onnx":
            raise ValueError(f"--model must be an .onnx file, got {str(self.model)!r}")
        if not self.model.is_file():
            raise ValueError(f"--model {str(self.model)!r}: no such file")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        cpu_tune.Budget(self.n_frames, self.seconds)      # validates


def run_tune(cfg: TuneConfig) -> cpu_tune.Decision:
    """Measure (always, overwriting any cached decision) and return the decision. The CLI's one library call."""
    frames = None
    if cfg.frames is not None:
        from perception.frames import load_frames
        frames = load_frames(cfg.frames, cfg.n_frames)
    return cpu_tune.tune(cfg.model, threads=cfg.threads, budget=cpu_tune.Budget(cfg.n_frames, cfg.seconds),
                         force=True, cache_dir=cfg.cache_dir, frames=frames)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Choose ONNX Runtime's CPU provider and precision for a model by "
                                            "measurement, and cache the choice.", add_help=add_help)
    p.add_argument("--model", required=True, type=Path, help="ONNX model (.onnx)")
    p.add_argument("--frames", type=Path, default=None,
                   help="dataset dir (manifest.csv) or image dir of reference frames (default: drawn road frames)")
    p.add_argument("--n-frames", type=int, default=cpu_tune.FULL.frames,
                   help=f"reference frames for the agreement check (default: {cpu_tune.FULL.frames})")
    p.add_argument("--seconds", type=float, default=cpu_tune.FULL.seconds,
                   help=f"timing budget, all candidates together (default: {cpu_tune.FULL.seconds})")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per session (default: $CARLA_PERCEPTION_THREADS, else measured: one "
                        "thread or one per physical core)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $CARLA_PERCEPTION_CACHE)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = TuneConfig(model=args.model, frames=args.frames, n_frames=args.n_frames, seconds=args.seconds,
                         threads=args.threads, cache_dir=args.cache_dir)
    except ValueError as e:
        parser.error(str(e))
    try:
        decision = run_tune(cfg)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
        print(f"tune failed: {e}", file=sys.stderr)
        return 2
    print(decision.report())
    print(f"cached in {cpu_tune.cache_path(decision.key, cfg.cache_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole pipeline in one command: collect -> train -> export -> evaluate, on the embedded simulator.

Example::

    python -m launch.quickstart                     # about 15 minutes on 2 CPU cores, no GPU, no internet
    python -m launch.quickstart --out runs/qs --frames 2000 --epochs 4

Steps (each one is the library function behind its own CLI, so every artifact is the same as
running the CLIs by hand):

1. ``carla_client.collect``: a small balanced dataset from Town01, Town03 and Town04 (training and
   validation towns) plus Town02 (the test town: the model never trains on it).
2. ``training.train``: EfficientNet-Lite0 from its packaged ImageNet weights (offline; the head alone
   for one epoch, then the whole network at lr 3e-4, cosine), validation by episode, Town02 held out.
   Why Lite0 and not B0: offline, B0 can only start from scratch, and the pretrained features are
   what carry over to frames rendered by CARLA itself (training/README.md: 91.5 % balanced accuracy
   on ``../shared/real_carla`` against 62.4 % for B0 from scratch; Town02 97.1 % against 94.8 %).
   ``--arch efficientnet_b0`` uses torchvision's ImageNet weights when they are in the torch cache,
   else trains from scratch (lr 1e-3, 10 epochs), said in one line.
3. ``perception.export``: ONNX with metadata, parity against torch on real frames.
4. ``launch.evaluate``: every gate drives the same Town02 routes; a report, trajectory plots and a
   video with the overlay.

The paths of every result are printed at the end.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from carla_client.cli import add_carla_args

log = logging.getLogger(__name__)

TRAIN_TOWNS = ("Town01", "Town03", "Town04")
TEST_TOWN = "Town02"


@dataclass
class QuickstartConfig:
    """The quickstart run. Defaults fit ~15 minutes on a 2-core CPU."""
    out: Path = Path("runs/quickstart")
    frames: int = 4000                 # dataset total (both classes get half), all towns together
    epochs: int | None = None          # None: 6 from pretrained weights, 10 from scratch
    img_size: int = 96
    arch: str = "efficientnet_lite0"
    weights: str = "auto"              # auto = imagenet if packaged or cached, else none
    eval_episodes: int = 1
    res: tuple[int, int] = (800, 600)
    seed: int = 0
    sim: str = "embedded"
    host: str = "127.0.0.1"
    port: int = 2000
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.frames < 8 or self.frames % 2:
            raise ValueError(f"--frames {self.frames}: need an even number >= 8")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs}: need >= 1")


@dataclass
class QuickstartResult:
    dataset: Path
    checkpoint: Path
    onnx: Path
    report: Path
    videos: dict
    seconds: dict


def _imagenet_weights_cached(arch: str) -> bool:
    """True when ImageNet weights for ``arch`` load offline: packaged (Lite0) or in the torch hub cache."""
    import torch
    import torchvision.models as tvm

    from training.models import get_spec
    spec = get_spec(arch)
    if spec.load_imagenet is not None:
        try:
            from training.efficientnet_lite import weights_path
            return Path(weights_path()).is_file()
        except RuntimeError:
            return False
    if spec.weights is None:
        return False
    enum_name, member = spec.weights.split(".")
    url = getattr(getattr(tvm, enum_name), member).url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def run_quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    from carla_client.collector import CollectConfig, collect
    from launch.evaluate import EvalConfig, run_evaluation
    from perception.export import ExportConfig, export
    from training.train import TrainConfig, train

    seconds: dict[str, float] = {}
    data = cfg.out / "data"

    _stage(f"1/4 collect {cfg.frames} frames from {', '.join(TRAIN_TOWNS + (TEST_TOWN,))} -> {data}")
    t = time.perf_counter()
    collect(CollectConfig(out=data, towns=TRAIN_TOWNS + (TEST_TOWN,), frames=cfg.frames, sim=cfg.sim,
                          host=cfg.host, ports=(cfg.port,), timeout=cfg.timeout,
                          res=cfg.res, seed=cfg.seed, min_spacing=3.0, episode_length=150.0,
                          workers=2 if cfg.sim == "embedded" else 1,
                          weather=("ClearNoon", "CloudySunset", "WetNoon", "HardRainNoon", "ClearSunset")))
    seconds["collect"] = time.perf_counter() - t

    weights = cfg.weights
    if weights == "auto":
        weights = "imagenet" if _imagenet_weights_cached(cfg.arch) else "none"
        print(f"weights: {weights} ({'ImageNet weights available offline' if weights == 'imagenet' else 'no ImageNet weights offline, training from scratch'})")
    scratch = weights == "none"
    epochs = cfg.epochs or (10 if scratch else 6)
    _stage(f"2/4 train {cfg.arch} at {cfg.img_size}px for {epochs} epochs (test town {TEST_TOWN} held out)")
    t = time.perf_counter()
    # Pretrained: one epoch for the head on the frozen backbone, then everything at 3e-4 (1e-3 overfit:
    # validation loss rose after the head epoch; 3e-4 kept improving, training/README.md).
    trained = train(TrainConfig(
        data=(str(data),), arch=cfg.arch, weights=weights, epochs=epochs, patience=epochs,
        img_size=cfg.img_size, test_towns=(TEST_TOWN,), seed=cfg.seed, out=str(cfg.out / "train"),
        freeze_epochs=0 if scratch else 1, unfreeze_blocks=-1, lr=1e-3 if scratch else 3e-4,
        lr_schedule="cosine", workers=0))
    seconds["train"] = time.perf_counter() - t
    checkpoint = trained.out / "weights" / "best.pt"

    _stage("3/4 export to ONNX")
    t = time.perf_counter()
    exported = export(ExportConfig(checkpoint=checkpoint, out=cfg.out / "model.onnx", frames=data))
    seconds["export"] = time.perf_counter() - t
    if exported.parity is not None:
        print(exported.parity)

    _stage(f"4/4 evaluate every gate on {TEST_TOWN}")
    t = time.perf_counter()
    evaluated = run_evaluation(EvalConfig(towns=[TEST_TOWN], model=str(exported.onnx), episodes=cfg.eval_episodes,
                                          out=str(cfg.out / "eval"), sim=cfg.sim, host=cfg.host, port=cfg.port,
                                          timeout=cfg.timeout, res=cfg.res, backend="auto"))
    seconds["evaluate"] = time.perf_counter() - t
    return QuickstartResult(dataset=data, checkpoint=checkpoint, onnx=exported.onnx,
                            report=evaluated.report_path, videos=evaluated.videos, seconds=seconds)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = QuickstartConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--out", default=str(d.out), help="root of every output (default %(default)s)")
    p.add_argument("--frames", type=int, default=d.frames, help="dataset size, even (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="training epochs (default: 6 from ImageNet weights, 10 from scratch)")
    p.add_argument("--img-size", type=int, default=d.img_size, help="model input size (default %(default)s)")
    p.add_argument("--arch", default=d.arch, help="model architecture (default %(default)s)")
    p.add_argument("--weights", default=d.weights,
                   help="auto (ImageNet if available offline, else none) | imagenet | none | PATH (default %(default)s)")
    p.add_argument("--episodes", type=int, default=d.eval_episodes, help="evaluation episodes per gate")
    add_carla_args(p, res="x".join(map(str, d.res)))
    p.set_defaults(sim=d.sim)  # the quickstart needs no CARLA server; --sim carla/auto to use one
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = QuickstartConfig(out=Path(args.out), frames=args.frames, epochs=args.epochs, img_size=args.img_size,
                               arch=args.arch, weights=args.weights, eval_episodes=args.episodes, seed=args.seed,
                               sim=args.sim, host=args.host, port=args.port, timeout=args.timeout, res=args.res)
    except ValueError as e:
        parser.error(str(e))
    t0 = time.perf_counter()
    try:
        result = run_quickstart(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is saved under", cfg.out, file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - t0
    print("\n=== done in {:.1f} min ({}) ===".format(
        total / 60, ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())))
    print(f"dataset:    {result.dataset}  (contact sheet: {result.dataset / 'contact_sheet.png'})")
    print(f"checkpoint: {result.checkpoint}  (metrics and plots in {result.checkpoint.parent.parent})")
    print(f"onnx:       {result.onnx}")
    print(f"report:     {result.report}")
    for town, video in result.videos.items():
        print(f"video:      {video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

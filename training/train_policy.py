"""Train a command-conditioned driving policy (camera + speed + route command -> steer/throttle/brake).

Examples::

    # the three experts of the MoE study, same data, same budget
    python -m training.train_policy --data data/study --subset curve    --out runs/policy/curve
    python -m training.train_policy --data data/study --subset straight --out runs/policy/straight
    python -m training.train_policy --data data/study --subset all      --out runs/policy/monolithic
    # the same on 2 GPUs (or 2 CPU processes): batch 64 per process
    torchrun --nproc_per_node 2 -m training.train_policy --data data/study --subset all --out runs/policy/mono2

Splits are by episode / held-out town (:mod:`datasets.splits`, as the classifier); recovery and
route-dependent (junction) frames are used. Writes ``weights/best.pt`` (contract + command list in the
checkpoint), ``history.csv``, ``curves.png``, ``metrics.json`` (MAE per output and per command per
split), ``split.json`` and TensorBoard events under ``tb/``.

DDP as the classifier (:mod:`training.ddp`): ``torchrun --nproc_per_node N -m training.train_policy ...``
(gloo on CPU, nccl on CUDA) trains each rank on its shard of every epoch's frames (``--batch-size`` is
per rank), gathers the validation predictions so metrics and early stopping agree on every rank, and
only rank 0 writes files. ``--dagger`` is refused under torchrun (the drives are one simulator process).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from carla_client.connection import CarlaConnectionError
from carla_client.route_command import COMMANDS
from datasets.dataset import DatasetError, load_contract
from datasets.schema import ContractError
from datasets.splits import SplitConfig, make_split
from training import ddp
from training.checkpoint import save_checkpoint
from training.policy import (OUTPUTS, POLICY_KIND, SPEED_SCALE_KMH, SUBSETS, PolicyTable, create_policy,
                             flip_batch, get_backbone, jitter_batch, list_backbones, load_images,
                             load_policy_table, one_hot, select_subset, to_input)
from training.train import EarlyStopping, resolve_device, seed_everything

log = logging.getLogger(__name__)

OUTPUT_SCALE = (0.1, 0.5, 0.5)
"""Typical magnitude of steer, throttle and brake: errors are divided by it, so that a steer error of 0.1
(the difference between a bend and a straight) weighs as much as a throttle error of 0.5."""
OUTPUT_WEIGHT = (1.0, 0.2, 0.1)
"""Loss weight per output after scaling: steering is what keeps the car on the road (CIL weights steer,
gas and brake 0.5/0.45/0.05; here steer counts more because the study's cruise mode drives only steer)."""


def _loss_terms(err):
    """Squared scaled error weighted per output; works on torch tensors and numpy arrays alike.

    Squared, not absolute: most lane-follow frames steer ~0, and an L1 loss is minimised by the median,
    so a policy trained with it learned a constant ~0 steer per command and ignored the image (measured:
    every LANEFOLLOW prediction was +0.002 on training frames).
    """
    scale = OUTPUT_SCALE
    return sum(OUTPUT_WEIGHT[i] * (err[:, i] / scale[i]) ** 2 for i in range(3))


@dataclass
class PolicyTrainConfig:
    """Every flag of ``training.train_policy``; stored as the checkpoint's ``recipe``."""
    data: tuple[str, ...] = ()
    subset: str = "all"
    arch: str = "pilotnet"
    weights: str = "none"
    input_hw: tuple[int, int] | None = None
    epochs: int = 30
    patience: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    dropout: float = 0.2
    hidden: int = 64
    val_towns: tuple[str, ...] = ()
    test_towns: tuple[str, ...] = ()
    val_split: float = 0.2
    hflip_prob: float = 0.5
    jitter: float = 0.2
    max_steps_per_epoch: int = 0
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    out: str = "runs/policy"
    cache_dir: str | None = None
    tensorboard: bool = True
    dagger: int = 0
    dagger_frames: int = 1000
    dagger_towns: tuple[str, ...] = ()
    dagger_sim: str = "embedded"
    host: str = "127.0.0.1"
    port: int = 2000

    def __post_init__(self) -> None:
        self.data = tuple(str(d) for d in self.data)
        self.val_towns, self.test_towns = tuple(self.val_towns), tuple(self.test_towns)
        self.dagger_towns = tuple(self.dagger_towns)
        if isinstance(self.input_hw, str):
            self.input_hw = parse_hw(self.input_hw)
        checks = [
            (self.subset in SUBSETS, f"--subset {self.subset!r}: valid: {', '.join(SUBSETS)}"),
            (self.arch in list_backbones(), f"--arch {self.arch!r}: valid: {', '.join(list_backbones())}"),
            (self.weights in ("none", "imagenet"), f"--weights {self.weights!r}: valid: none, imagenet"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (self.patience >= 0, f"--patience {self.patience}: must be >= 0"),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (0 <= self.hflip_prob <= 1, f"--hflip-prob {self.hflip_prob}: must be in [0, 1]"),
            (self.device in ("auto", "cpu", "cuda"), f"--device {self.device!r}: valid: auto, cpu, cuda"),
            (self.dagger >= 0, f"--dagger {self.dagger}: must be >= 0 rounds"),
            (self.dagger_frames >= 2 and self.dagger_frames % 2 == 0,
             f"--dagger-frames {self.dagger_frames}: need an even number >= 2 (curve and straight get half each)"),
            (self.dagger_sim in ("auto", "embedded", "carla"), f"--dagger-sim {self.dagger_sim!r}: valid: auto, embedded, carla"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.amp and self.device == "cpu":
            raise ValueError("--amp needs a CUDA device; drop --amp or use --device cuda/auto")
        SplitConfig(self.val_split, self.val_towns, self.test_towns, self.seed)

    @property
    def resolved_hw(self) -> tuple[int, int]:
        return tuple(self.input_hw) if self.input_hw else get_backbone(self.arch).input_hw

    def recipe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def parse_hw(text: str) -> tuple[int, int]:
    """``66x200`` -> (66, 200) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input-hw {text!r}: expected HEIGHTxWIDTH, e.g. 66x200") from None
    if h < 16 or w < 16:
        raise ValueError(f"--input-hw {text!r}: height and width must be >= 16")
    return h, w


@dataclass
class PolicyTrainResult:
    out: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ steps

def _batches(n: int, batch_size: int, rng: np.random.Generator | None, info: ddp.DistInfo = ddp.DistInfo()):
    """This rank's batches of one epoch (shuffled when ``rng`` is given).

    Under DDP every rank draws the same permutation (same seed), drops its last ``n % world_size``
    frames (other ones each epoch) and takes every world_size-th frame from its rank on: the shards are
    disjoint, together they are the epoch, and all ranks take equally many steps (DDP all-reduces the
    gradients at every step, so one rank's extra batch would hang the others), as
    ``DistributedSampler(drop_last=True)``. One process: the whole permutation, as before DDP.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if info.enabled:
        order = order[:n - n % info.world_size][info.rank::info.world_size]
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


def _loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _loss_terms(pred.float() - target).mean()


@dataclass
class _Data:
    images: np.ndarray   # uint8 (N,H,W,3)
    pt: PolicyTable


def train_one_epoch(model, optimizer, data: _Data, cfg: PolicyTrainConfig, mean, std, device, rng, gen,
                    scaler=None, info: ddp.DistInfo = ddp.DistInfo()) -> tuple[float, int]:
    """One pass over this rank's shard of the training frames (flip + jitter augmentation).

    Returns (mean loss, frames) over every rank: the per-step loss sums are all-reduced, which is also
    what lets every rank stop together on a non-finite loss (a rank raising alone would hang the others).
    """
    model.train()
    total, count = 0.0, 0
    for step, idx in enumerate(_batches(len(data.pt), cfg.batch_size, rng, info)):
        if cfg.max_steps_per_epoch and step >= cfg.max_steps_per_epoch:
            break
        img = to_input(data.images[idx], mean, std)
        ctrl = torch.from_numpy(data.pt.controls[idx])
        cmd = torch.from_numpy(data.pt.command[idx])
        img, ctrl, cmd = flip_batch(img, ctrl, cmd, torch.rand(len(idx), generator=gen) < cfg.hflip_prob)
        if cfg.jitter > 0:
            img = jitter_batch(img, gen, cfg.jitter)
        speed = torch.from_numpy(data.pt.speed[idx] / SPEED_SCALE_KMH).unsqueeze(1)
        img, ctrl, speed, oh = img.to(device), ctrl.to(device), speed.to(device), one_hot(cmd).to(device)
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = _loss(model(img, speed, oh), ctrl)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step_sum, step_count = ddp.all_reduce_sum([loss.item() * len(idx), float(len(idx))], info, device)
        if not math.isfinite(step_sum):
            raise FloatingPointError(f"non-finite training loss at step {step}; lower --lr")
        total += step_sum
        count += int(step_count)
    return total / max(1, count), count


@torch.no_grad()
def predict(model, data: _Data, mean, std, device, batch_size: int = 256,
            info: ddp.DistInfo = ddp.DistInfo()) -> np.ndarray:
    """(N, 3) predictions, no augmentation. Under DDP each rank predicts frames rank, rank + world, ...
    and the predictions are gathered back into frame order on every rank (every frame counted once)."""
    model.eval()
    mine = np.arange(info.rank, len(data.pt), info.world_size)
    out = []
    for i in range(0, len(mine), batch_size):
        idx = mine[i:i + batch_size]
        img = to_input(data.images[idx], mean, std).to(device)
        speed = torch.from_numpy(data.pt.speed[idx] / SPEED_SCALE_KMH).unsqueeze(1).to(device)
        out.append(model(img, speed, one_hot(torch.from_numpy(data.pt.command[idx])).to(device)).float().cpu().numpy())
    pred = np.concatenate(out) if out else np.zeros((0, 3), np.float32)
    if not info.enabled:
        return pred
    got = ddp.gather_arrays({"index": mine, "pred": pred}, info)
    return got["pred"][np.argsort(got["index"], kind="stable")]


def _sync_buffers(model: torch.nn.Module, info: ddp.DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank before evaluating: DDP broadcasts
    them at the start of each forward, so after the last training step each rank still holds the
    statistics its own last batch left, and the ranks' shards would be scored by slightly different models."""
    if info.enabled:
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)


def regression_metrics(pred: np.ndarray, target: np.ndarray, command: np.ndarray) -> dict:
    """MAE per output, overall and per command (commands with frames only); ``loss`` as trained."""
    err = np.abs(pred - target)
    m = {"frames": int(len(target)),
         "loss": float(_loss_terms(pred - target).mean()) if len(target) else float("nan"),
         "mae": {o: float(err[:, i].mean()) if len(target) else float("nan") for i, o in enumerate(OUTPUTS)},
         "mae_per_command": {}}
    for ci, name in enumerate(COMMANDS):
        sel = command == ci
        if sel.any():
            m["mae_per_command"][name] = {"frames": int(sel.sum()),
                                          **{o: float(err[sel, i].mean()) for i, o in enumerate(OUTPUTS)}}
    return m


def plot_history(history: list[dict], path: Path) -> None:
    """Loss (train, val) and validation steer MAE per epoch."""
    from training.plots import _plt
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    axes[0].set_title("loss (weighted scaled MSE)")
    axes[1].plot(ep, [h["val_mae_steer"] for h in history], "o-", label="steer")
    axes[1].plot(ep, [h["val_mae_throttle"] for h in history], "o-", label="throttle")
    axes[1].plot(ep, [h["val_mae_brake"] for h in history], "o-", label="brake")
    axes[1].set_title("validation MAE")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main work

def _prepare(cfg: PolicyTrainConfig, out: Path,
             info: ddp.DistInfo = ddp.DistInfo()) -> tuple[dict[str, _Data], dict, object]:
    """Split, subset and decoded frames. The split is deterministic (seeded), so every rank computes the
    same one; rank 0 decodes the frames and writes the cache first and the other ranks then read it
    (two ranks writing one cache file would race)."""
    contract = load_contract(cfg.data)
    pt_all = load_policy_table(cfg.data)
    split = make_split(pt_all.table, SplitConfig(cfg.val_split, cfg.val_towns, cfg.test_towns, cfg.seed))
    if info.is_main:
        split.save(out / "split.json", pt_all.table)
    tables = {name: select_subset(pt_all.subset(idx), cfg.subset) for name, idx in split.indices.items()}
    if len(tables["train"]) == 0 or len(tables["val"]) == 0:
        raise DatasetError(f"--subset {cfg.subset}: no {'training' if not len(tables['train']) else 'validation'} "
                           "frames; collect more episodes or change the split")
    cache = cfg.cache_dir or str(Path(cfg.data[0]) / "cache")
    hw = cfg.resolved_hw

    def decode() -> dict[str, _Data]:
        return {name: _Data(load_images(pt.table, hw, cache) if len(pt) else np.zeros((0, *hw, 3), np.uint8), pt)
                for name, pt in tables.items()}
    data = decode() if info.is_main else None
    ddp.barrier(info)
    if data is None:
        data = decode()
    counts = {k: {"frames": len(v.pt), "recovery": int(v.pt.recovery.sum()),
                  "route_dependent": int(v.pt.table.route_dependent.sum())} for k, v in data.items()}
    log.info("frames per split (%s): %s", cfg.subset, counts)
    return data, counts, contract


def _config(cfg: PolicyTrainConfig, contract) -> dict:
    spec = get_backbone(cfg.arch)
    return {"kind": POLICY_KIND, "arch": cfg.arch, "input_hw": list(cfg.resolved_hw), "mean": list(spec.mean),
            "std": list(spec.std), "color_order": "RGB", "commands": list(COMMANDS), "outputs": list(OUTPUTS),
            "speed_scale_kmh": SPEED_SCALE_KMH, "subset": cfg.subset, "dropout": cfg.dropout,
            "hidden": cfg.hidden, "contract": contract.to_json() if contract else None, "recipe": cfg.recipe()}


def train_policy(cfg: PolicyTrainConfig, init: str | Path | None = None) -> PolicyTrainResult:
    """Train one policy on ``cfg.subset`` of ``cfg.data``; early stopping on validation loss.

    Under ``torchrun`` (RANK/WORLD_SIZE set) every rank calls this and joins the process group here;
    every rank returns the same metrics. ``init``: a policy checkpoint to start from (DAgger rounds
    warm-start from the previous round). DAgger itself (``cfg.dagger``) is run by
    :func:`training.dagger.run_dagger` around this."""
    with ddp.distributed(resolve_device(cfg.device).type) as info:
        return _train_policy(cfg, init, info)


def _train_policy(cfg: PolicyTrainConfig, init: str | Path | None, info: ddp.DistInfo) -> PolicyTrainResult:
    out = Path(cfg.out)
    if info.is_main:
        (out / "weights").mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(cfg.recipe(), indent=2))
    seed_everything(cfg.seed + info.rank)   # dropout differs per rank; DDP copies rank 0's initial weights
    device = resolve_device(cfg.device, info.local_rank)
    data, counts, contract = _prepare(cfg, out, info)
    spec = get_backbone(cfg.arch)
    model = create_policy(cfg.arch, cfg.weights, cfg.dropout, cfg.hidden)
    if init is not None:
        model.load_state_dict(_load_best(Path(init), "cpu")[0].state_dict())
    model = model.to(device)
    net = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if info.enabled else model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    config = _config(cfg, contract)
    writer = _tensorboard(out) if cfg.tensorboard and info.is_main else None
    stopper = EarlyStopping(cfg.patience)
    # the shuffle stream is shared (every rank draws the same permutation and takes its shard of it);
    # the augmentation stream is per rank
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed + info.rank)
    history: list[dict] = []
    best_state = None
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        train_loss, frames = train_one_epoch(net, optimizer, data["train"], cfg, spec.mean, spec.std, device, rng,
                                             gen, scaler, info)
        _sync_buffers(model, info)
        val = regression_metrics(predict(model, data["val"], spec.mean, spec.std, device, info=info),
                                 data["val"].pt.controls, data["val"].pt.command)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
               **{f"val_mae_{o}": val["mae"][o] for o in OUTPUTS}, "train_frames": frames,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(k, v, epoch)
        if stopper.step(epoch, val["loss"]):   # the same decision on every rank: val is gathered
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if info.is_main:
                save_checkpoint(out / "weights" / "best.pt", model, config, epoch, {"val": val})
        if info.is_main:
            log.info("epoch %d: train %.4f val %.4f steer MAE %.4f", epoch, train_loss, val["loss"],
                     val["mae"]["steer"])
        if stopper.should_stop:
            if info.is_main:
                log.info("early stop at epoch %d (best %d)", epoch, stopper.best_epoch)
            break
    if writer is not None:
        writer.close()
    if best_state is None:
        raise FloatingPointError("the validation loss was never finite; lower --lr")
    model.load_state_dict(best_state)
    metrics = {"subset": cfg.subset, "arch": cfg.arch, "best_epoch": stopper.best_epoch, "frames": counts,
               "world_size": info.world_size,
               **{name: regression_metrics(predict(model, d, spec.mean, spec.std, device, info=info), d.pt.controls,
                                           d.pt.command)
                  for name, d in data.items() if len(d.pt)}}
    if info.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        _write_history(out / "history.csv", history)
        plot_history(history, out / "curves.png")
    return PolicyTrainResult(out, metrics, history)


def _load_best(path: Path, device):
    from training.policy import load_policy_checkpoint
    model, cfg = load_policy_checkpoint(path)
    return model.to(device), cfg


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: the CSV and PNG carry the same numbers
        log.warning("tensorboard not installed: no TensorBoard events (history.csv has the numbers)")
        return None
    return SummaryWriter(str(out / "tb"))


def _write_history(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


# ------------------------------------------------------------------------------------------ CLI

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = PolicyTrainConfig()
    p = argparse.ArgumentParser(description="Train a command-conditioned driving policy (curve/straight expert "
                                "or monolithic)", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="dataset directories")
    p.add_argument("--subset", default=d.subset, choices=SUBSETS, help="frames to train on (by label)")
    p.add_argument("--arch", default=d.arch, choices=list_backbones(), help="backbone")
    p.add_argument("--weights", default=d.weights, choices=("none", "imagenet"), help="backbone initialisation")
    p.add_argument("--input-hw", default=None, help="input HEIGHTxWIDTH (default: the backbone's, 66x200 for pilotnet)")
    for name in ("epochs", "patience", "batch_size", "hidden", "max_steps_per_epoch", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help="batch size per process (under torchrun the step sees N times it)" if name == "batch_size"
                       else name.replace("_", " "))
    for name in ("lr", "weight_decay", "dropout", "val_split", "hflip_prob", "jitter"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name), help=name.replace("_", " "))
    p.add_argument("--val-towns", nargs="*", default=[], metavar="TOWN", help="towns held out for validation")
    p.add_argument("--test-towns", nargs="*", default=[], metavar="TOWN", help="towns held out for test")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"), help="compute device")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--out", default=d.out, help="run directory")
    p.add_argument("--cache-dir", default=None, help="decoded-frame cache (default <data>/cache)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard events")
    g = p.add_argument_group("DAgger", "drive the trained policy, relabel its states with the privileged route "
                             "follower, aggregate and retrain (warm start), K times")
    g.add_argument("--dagger", type=int, default=d.dagger, metavar="K", help="DAgger rounds (0 = off)")
    g.add_argument("--dagger-frames", type=int, default=d.dagger_frames, help="frames collected per round, even")
    g.add_argument("--dagger-towns", nargs="*", default=[], metavar="TOWN",
                   help="towns to drive in (default: the training towns, without --val-towns/--test-towns)")
    g.add_argument("--dagger-sim", default=d.dagger_sim, choices=("auto", "embedded", "carla"),
                   help="simulator of the DAgger drives")
    g.add_argument("--host", default=d.host, help="CARLA server host (--dagger-sim carla/auto)")
    g.add_argument("--port", type=int, default=d.port, help="CARLA server RPC port")
    return p


DAGGER_NEEDS_ONE_PROCESS = ("--dagger drives the simulator in one process and cannot run under torchrun; "
                            "train with torchrun without --dagger, or run --dagger without torchrun")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    names = {f.name for f in fields(PolicyTrainConfig)}
    if args.dagger and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        if rank == 0:   # every rank refuses; one line says why
            print(f"error: {DAGGER_NEEDS_ONE_PROCESS}", file=sys.stderr)
        return 2
    try:
        cfg = PolicyTrainConfig(**{k: v for k, v in vars(args).items() if k in names})
        result = train_policy(cfg)
        if cfg.dagger:
            from training.dagger import run_dagger
            result = run_dagger(cfg, result)
    except (ValueError, DatasetError, ContractError, FileNotFoundError, PermissionError, CarlaConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    val = result.metrics.get("val", {})
    print(f"{cfg.subset}: best epoch {result.metrics['best_epoch']}, val steer MAE {val['mae']['steer']:.4f} -> "
          f"{result.out / 'weights' / 'best.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

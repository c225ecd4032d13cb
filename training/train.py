"""Fine-tune a curve/straight classifier on collected frames (shape of torchvision's references/classification).

Examples::

    # the reference recipe: EfficientNet-B0, ImageNet weights, 35 epochs, lr 1e-4, dropout 0.3,
    # 5 epochs head-only on a frozen backbone, then the last 3 blocks unfrozen; Town03 held out
    python -m training.train --data data/town123 --val-towns Town03

    # offline / from scratch, small and fast (the CPU acceptance run)
    python -m training.train --data data/town123 --val-towns Town03 --weights none --img-size 96 --epochs 4

    # several GPUs (or CPU processes with gloo)
    torchrun --nproc_per_node 4 -m training.train --data data/town123 --val-towns Town03 --amp

Two-stage fine-tuning and the BatchNorm policy: with pretrained weights (``imagenet`` or a
path), stage 1 (``--freeze-epochs``) trains only the head on a frozen backbone and stage 2
unfreezes the last ``--unfreeze-blocks`` backbone blocks (``-1``: all) with a fresh optimizer.
BatchNorm layers whose parameters are frozen stay in eval mode: they keep their ImageNet running
statistics instead of drifting towards a small driving dataset under weights that cannot adapt
to them. BatchNorm layers of unfrozen blocks train normally. With ``--weights none`` there is
nothing to protect and the whole network trains from the first epoch.

Early stopping watches the validation loss (``--patience`` epochs without improvement, counted
in the last stage only so stage 1 cannot end the run before unfreezing); the best weights are
restored before the final metrics. The run directory gets ``weights/best.pt`` + ``last.pt``,
``metrics.json``, ``history.csv``, ``curves.png``, ``confusion_matrix.png``, ``predictions.png``,
``split.json``, ``args.yaml`` and TensorBoard logs in ``tb/``.

The camera/label contract: every ``--data`` directory's ``dataset.json`` must record the same
camera and label definition (else one error line names the differing fields, e.g. ``camera.fov``);
it is stored in the checkpoint as ``config["contract"]`` (None for datasets that record none) and
travels on to the ONNX and the drive loop. Frames flagged ``route_dependent`` by the collector's
``--junction-policy flag`` are skipped (their label hangs on a route choice the camera cannot see).

The work is four steps, each a function: :func:`build_data`, :func:`build_model`, :func:`fit`,
:func:`report`; the loops take a :class:`Runtime` (device, AMP, DDP rank) instead of many flags.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from datasets.io_safety import check_output_path, check_img_size, cli_errors, write_json_atomic
from datasets.dataset import (DatasetError, FrameCache, FrameDataset, FrameTable, build_cache, check_classes,
                              load_contract, load_frames)
from datasets.presets import ClassificationPresetEval, ClassificationPresetTrain
from datasets.preprocess import FULL_FRAME, TTA_CHOICES, check_crop_rows, check_tta
from datasets.schema import CLASSES, Contract, ContractError, describe_differences
from datasets.splits import SplitConfig, load_split, make_split
from training import ddp
from training.calibration import calibration_report as calibrate
from training.checkpoint import capture_rng_state, read_checkpoint, restore_rng_state, save_checkpoint
from training.metrics import classification_metrics
from training.models import create_model, data_config, get_spec, list_models, with_tta

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("constant", "cosine")
RESUME_OVERRIDES = ("data", "epochs", "patience", "device", "amp", "workers", "resume", "out", "cache_dir")
"""Flags taken from the command line on --resume; every other flag comes from the checkpoint's recipe."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: training diverged."""


# ------------------------------------------------------------------------------------------ config

@dataclass
class TrainConfig:
    """Every training flag; stored verbatim as the checkpoint's ``recipe``."""
    data: tuple[str, ...] = ()
    arch: str = "efficientnet_b0"
    weights: str = "imagenet"
    epochs: int = 35
    patience: int = 7
    lr: float = 1e-4
    lr_schedule: str = "constant"
    opt: str = "adamw"
    weight_decay: float = 0.01
    dropout: float = 0.3
    batch_size: int = 32
    img_size: int = 224
    crop_rows: tuple[float, float] = FULL_FRAME
    freeze_epochs: int = 5
    unfreeze_blocks: int = 3
    val_towns: tuple[str, ...] = ()
    test_towns: tuple[str, ...] = ()
    val_split: float = 0.2
    augment: bool = True
    hflip_prob: float = 0.5
    device: str = "auto"
    amp: bool = False
    workers: int = min(8, os.cpu_count() or 1)
    seed: int = 0
    resume: str | None = None
    out: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    gpu_augment: bool = False
    cudnn_benchmark: bool = False
    horizon_weight: float = 1.0
    tta: str = "none"

    def __post_init__(self):
        self.data = tuple(str(d) for d in self.data)
        self.val_towns, self.test_towns = tuple(self.val_towns), tuple(self.test_towns)
        self.crop_rows = check_crop_rows(self.crop_rows)
        check_tta(self.tta)
        if self.arch not in list_models():
            raise ValueError(f"--arch {self.arch!r}: unknown; valid: {', '.join(list_models())}")
        checks = [
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (self.patience >= 0, f"--patience {self.patience}: must be >= 0 (0 disables early stopping)"),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (0.0 <= self.dropout < 1.0, f"--dropout {self.dropout}: must be in [0, 1)"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (self.img_size >= 16, f"--img-size {self.img_size}: must be >= 16"),
            (check_img_size(self.img_size, "--img-size") > 0, ""),
            (self.freeze_epochs >= 0, f"--freeze-epochs {self.freeze_epochs}: must be >= 0"),
            (self.unfreeze_blocks >= -1, f"--unfreeze-blocks {self.unfreeze_blocks}: must be >= 0, or -1 for all"),
            (self.workers >= 0, f"--workers {self.workers}: must be >= 0"),
            (0.0 <= self.hflip_prob <= 1.0, f"--hflip-prob {self.hflip_prob}: must be in [0, 1]"),
            (self.horizon_weight > 0, f"--horizon-weight {self.horizon_weight}: must be > 0 (1 = every frame alike)"),
            (self.device in DEVICES, f"--device {self.device!r}: unknown; valid: {', '.join(DEVICES)}"),
            (self.opt in OPTIMIZERS, f"--opt {self.opt!r}: unknown; valid: {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"--lr-schedule {self.lr_schedule!r}: unknown; valid: {', '.join(LR_SCHEDULES)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.amp and self.device == "cpu":
            raise ValueError("--amp needs a CUDA device; drop --amp or use --device cuda/auto")
        SplitConfig(self.val_split, self.val_towns, self.test_towns, self.seed)  # validates the split flags

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    def recipe(self) -> dict:
        """Plain-type dict of every flag (checkpoint ``recipe``, args.yaml)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class TrainResult:
    out: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description="Train the curve/straight classifier on collected CARLA frames",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="dataset directories (manifest.csv + dataset.json)")
    p.add_argument("--arch", default=d.arch, choices=list_models(), help="model architecture")
    p.add_argument("--weights", default=d.weights, help="imagenet | none | PATH to a .pth/.pt state dict")
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum number of epochs")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without val-loss improvement (0: off)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES, help="per-stage learning-rate schedule")
    p.add_argument("--opt", default=d.opt, choices=OPTIMIZERS, help="optimizer")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="weight decay (decoupled for adamw)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the linear head")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch per process")
    p.add_argument("--img-size", type=int, default=d.img_size, help="square input side, px")
    p.add_argument("--crop-rows", type=float, nargs=2, default=list(d.crop_rows), metavar=("TOP", "BOTTOM"),
                   help="keep only this band of every frame's rows (fractions of its height) before resizing; "
                        "stored in the model, so evaluation, export and inference crop alike. 0.3 0.8 on the 2 m "
                        "hood camera keeps the horizon under any pitch of the domain randomisation and doubles "
                        "the rows given to the distant road")
    p.add_argument("--freeze-epochs", type=int, default=d.freeze_epochs, help="stage 1 length: head only on a frozen backbone (pretrained weights only)")
    p.add_argument("--unfreeze-blocks", type=int, default=d.unfreeze_blocks, help="stage 2: last N backbone blocks to unfreeze (-1: all)")
    p.add_argument("--val-towns", nargs="*", default=[], metavar="TOWN", help="towns held out for validation")
    p.add_argument("--test-towns", nargs="*", default=[], metavar="TOWN", help="towns held out for test")
    p.add_argument("--val-split", type=float, default=d.val_split, help="fraction of episodes per town for validation (without --val-towns)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="disable training augmentation")
    p.add_argument("--hflip-prob", type=float, default=d.hflip_prob, help="horizontal flip probability (label-preserving)")
    p.add_argument("--horizon-weight", type=float, default=d.horizon_weight,
                   help="loss weight of straight frames whose route turns within twice the label lookahead "
                        "(the curve beyond the horizon: see training/horizon.py); 1 = every frame alike")
    p.add_argument("--tta", default=d.tta, choices=TTA_CHOICES,
                   help="test-time augmentation stored with the model and used by the final val/test evaluation, "
                        "the temperature fit and every backend (hflip: mean logits of the frame and its mirror, "
                        "2x the inference work); epochs are still selected on plain val accuracy")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="compute device")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16 where supported, else fp16)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of split, init, shuffling and augmentation")
    p.add_argument("--resume", default=None, metavar="LAST_PT", help="continue a run from its weights/last.pt")
    p.add_argument("--out", default=None, help="run directory (default runs/train/<arch>-<timestamp>)")
    p.add_argument("--cache-dir", default=None, help="where to keep the uint8 frame cache (default <data>/cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN autotune its kernels (off by default: tens of seconds on the first step, no gain "
                        "measured for EfficientNet-B0 on an H100)")
    p.add_argument("--gpu-augment", action="store_true",
                   help="GPU recipe: geometric augmentation in the workers, photometric + normalisation on the device "
                        "per batch (datasets/gpu_augment.py); default: the albumentations CPU recipe")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


# ------------------------------------------------------------------------------------------ helpers

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available; valid here: auto, cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def fork_safe_cv2():
    """Run with OpenCV single-threaded, restoring its setting afterwards.

    OpenCV's internal thread pool is not fork-safe: once the parent process has used it (resizing
    800x600 frames while building the cache does), forked DataLoader workers deadlock in their first
    cv2 call. Parallelism comes from the workers and the cache's thread pool instead.
    """
    import cv2
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own albumentations stream (its RNG ignores torch/numpy seeds)."""
    import cv2
    cv2.setNumThreads(1)  # workers are the parallelism; cv2 thread pools would oversubscribe the cores
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, drawn from the loader's generator
    np.random.seed(seed)
    random.seed(seed)
    if hasattr(info.dataset.transform, "set_random_seed"):
        info.dataset.transform.set_random_seed(seed)


def stage_of(epoch: int, cfg: TrainConfig) -> int:
    """1 = head only on a frozen backbone, 2 = last blocks unfrozen (0-based epoch)."""
    return 1 if cfg.pretrained and epoch < cfg.freeze_epochs else 2


def set_trainable(model: nn.Module, arch: str, stage: int, cfg: TrainConfig) -> list[nn.Parameter]:
    """Set requires_grad for ``stage``; returns the trainable parameters."""
    spec = get_spec(arch)
    if not cfg.pretrained or (stage == 2 and cfg.unfreeze_blocks == -1):
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        open_modules = [spec.head_module(model)]
        if stage == 2 and cfg.unfreeze_blocks > 0:
            open_modules += spec.blocks(model)[-cfg.unfreeze_blocks:]
        for m in open_modules:
            for p in m.parameters():
                p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: nn.Module) -> None:
    """``model.train()`` except BatchNorm layers whose parameters are frozen: they stay in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.opt == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of a (0-based) epoch: constant, or a cosine restarted at each stage."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    start, end = (0, cfg.freeze_epochs) if stage_of(epoch, cfg) == 1 else (
        cfg.freeze_epochs if cfg.pretrained else 0, cfg.epochs)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - start) / max(1, end - start)))


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, info: ddp.DistInfo) -> None:
    value = loss_sum.detach().double().clone()  # all_reduce is in place: never touch the running sum
    if info.enabled:
        torch.distributed.all_reduce(value)
    if not torch.isfinite(value):
        raise NonFiniteLossError(f"loss became {value.item()} in epoch {epoch} by step {step}: training diverged; "
                                 "lower --lr, or drop --amp")


@dataclass
class EarlyStopping:
    """Early stopping on validation loss. Epochs without improvement count only in the last stage,
    so a plateau of the head-only stage cannot end the run before the backbone is unfrozen."""
    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, epoch: int, val_loss: float, counts: bool = True) -> bool:
        """Record one epoch's val loss; True when it is the best so far."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        if counts:
            self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict:
        """What last.pt stores to resume the count."""
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


@dataclass
class Runtime:
    """Where and how the loops run: device, mixed precision, DDP rank, progress bars.

    One object handed to :func:`train_one_epoch` and :func:`evaluate` instead of six keyword
    arguments each; the default is a single CPU process in FP32.
    """
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None      # fp16 autocast only (bf16 needs none)
    channels_last: bool = False
    info: ddp.DistInfo = field(default_factory=ddp.DistInfo)
    progress: bool = True

    @classmethod
    def create(cls, cfg: TrainConfig, info: ddp.DistInfo) -> "Runtime":
        """The runtime ``cfg`` asks for on this rank (bf16 autocast where the GPU has it, else fp16 + scaler)."""
        device = resolve_device(cfg.device, info.local_rank)
        if cfg.amp and device.type != "cuda":
            log.warning("--amp ignored: no CUDA device (running on CPU)")
        amp_dtype = None
        if cfg.amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cuda":
            # cuDNN's autotuner off: measured on an H100 (EfficientNet-B0, 224 px, batch 256, bf16, channels_last)
            # it cost 26-45 s on the first step and gained nothing after (4440 vs 4520 img/s without it);
            # it was most of the 47 s first epoch (training.bench --no-cudnn-benchmark compares both).
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        return cls(device, amp_dtype, torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
                   channels_last=device.type == "cuda", info=info, progress=cfg.progress)

    @property
    def bar_disable(self) -> bool | None:
        """tqdm's ``disable``: off when progress is off or on a non-main rank, else None (shown only on a terminal)."""
        return None if self.progress and self.info.is_main else True

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=True, memory_format=fmt), y.to(self.device, non_blocking=True)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()


# ------------------------------------------------------------------------------------------ loops

def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                    epoch: int, rt: Runtime | None = None, *, desc: str = "", check_every: int = 10,
                    batch_transform=None, sample_weight: torch.Tensor | None = None) -> dict:
    """One pass over ``loader``; returns loss, accuracy, images/s and the share of time spent waiting on data.

    ``sample_weight`` (per dataset index, on the device): the loss is the weighted mean of the frames'
    cross-entropies instead of ``criterion``'s plain mean.

    Raises:
        NonFiniteLossError: the loss went NaN/inf (checked every ``check_every`` steps without a
            per-step GPU sync).
    """
    from tqdm import tqdm

    rt = rt or Runtime()
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    seen, wait = 0, 0.0
    t0 = tick = time.perf_counter()
    bar = tqdm(loader, desc=desc or f"epoch {epoch}", unit="batch", disable=rt.bar_disable, leave=True,
               dynamic_ncols=True)
    step = 0
    for step, (x, y, index) in enumerate(bar, 1):
        wait += time.perf_counter() - tick
        x, y = rt.to_device(x, y)
        if batch_transform is not None:   # GPU recipe: uint8 batch -> augmented, normalised float
            x = batch_transform(x)
        with rt.autocast():
            logits = model(x)
            if sample_weight is None:
                loss = criterion(logits, y)
            else:
                w = sample_weight[index.to(sample_weight.device)]
                loss = (nn.functional.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
        rt.backward_step(loss, optimizer)
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if step % check_every == 0:
            _check_finite(loss_sum, epoch, step, rt.info)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
        tick = time.perf_counter()
    _check_finite(loss_sum, epoch, step, rt.info)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    elapsed = time.perf_counter() - t0
    total_loss, total_correct, total_seen, total_wait = ddp.all_reduce_sum(
        [loss_sum.item(), float(correct.item()), float(seen), wait], rt.info, rt.device)
    return {"loss": total_loss / max(total_seen, 1), "acc": total_correct / max(total_seen, 1),
            "images": int(total_seen), "seconds": elapsed, "images_per_s": total_seen / max(elapsed, 1e-9),
            "data_wait_frac": total_wait / rt.info.world_size / max(elapsed, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: DataLoader, rt: Runtime | None = None, *,
             desc: str = "eval") -> dict:
    """Predictions of ``model`` over ``loader`` gathered from every rank, sorted by dataset index.

    Returns ``{"loss", "acc", "index", "labels", "probs", "logits"}`` (arrays over the whole split).
    """
    from tqdm import tqdm

    rt = rt or Runtime(progress=False)
    model.eval()
    idx, labels, probs, losses, raw = [], [], [], [], []
    for x, y, i in tqdm(loader, desc=desc, unit="batch", disable=rt.bar_disable, leave=False):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            logits = model(x)
        logits = logits.float()
        losses.append(nn.functional.cross_entropy(logits, y, reduction="none").cpu().numpy())
        probs.append(torch.softmax(logits, 1).cpu().numpy())
        raw.append(logits.cpu().numpy())
        labels.append(y.cpu().numpy())
        idx.append(i.numpy())
    n_cls = len(CLASSES)
    local = {"index": np.concatenate(idx) if idx else np.zeros(0, np.int64),
             "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
             "probs": np.concatenate(probs) if probs else np.zeros((0, n_cls), np.float32),
             "logits": np.concatenate(raw) if raw else np.zeros((0, n_cls), np.float32),
             "losses": np.concatenate(losses) if losses else np.zeros(0, np.float32)}
    out = ddp.gather_arrays(local, rt.info)
    order = np.argsort(out["index"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    out["loss"] = float(out["losses"].mean()) if len(out["losses"]) else float("nan")
    out["acc"] = float((out["probs"].argmax(1) == out["labels"]).mean()) if len(out["labels"]) else float("nan")
    return out


def make_loader(dataset: FrameDataset, batch_size: int, workers: int, device: torch.device, *, train: bool,
                info: ddp.DistInfo, seed: int) -> DataLoader:
    """DataLoader over the memmapped cache: workers seeded per rank, pinned memory on CUDA."""
    gen = torch.Generator().manual_seed(seed + 1000 * info.rank)
    if train:
        sampler = (DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)
                   if info.enabled else RandomSampler(dataset, generator=gen))
    else:
        sampler = ddp.ShardSampler(len(dataset), info)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=train and len(dataset) > batch_size,
                      worker_init_fn=_seed_worker if workers else None, generator=gen,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


@dataclass
class PreparedData:
    """The usable frames of some dataset directories and their uint8 cache (see :func:`prepare_data`)."""
    table: FrameTable
    cache: FrameCache
    corrupt_skipped: int = 0
    route_dependent_skipped: int = 0


def prepare_data(data: tuple[str, ...], img_size: int, cache_dir: str | None, info: ddp.DistInfo,
                 progress: bool, crop_rows: tuple[float, float] = FULL_FRAME) -> PreparedData:
    """Load + validate the manifests, build the cache on rank 0 (others wait), drop corrupt frames and
    route-dependent ones (a label decided by a route choice at a junction the camera cannot see is noise
    to a classifier; the collector's ``--junction-policy flag`` keeps them for driving policies).
    """
    table = load_frames(data)
    if info.is_main:
        cache = build_cache(table, img_size, cache_dir, progress=progress, crop_rows=crop_rows)
    ddp.barrier(info)
    if not info.is_main:
        cache = build_cache(table, img_size, cache_dir, progress=False, crop_rows=crop_rows)
    corrupt = cache.corrupt_mask(table)
    route_dependent = table.route_dependent & ~corrupt
    if route_dependent.any() and info.is_main:
        log.info("skipped %d of %d frames flagged route_dependent (label depends on a route choice the camera "
                 "cannot see)", int(route_dependent.sum()), len(table))
    table = table.subset(~(corrupt | route_dependent))
    check_classes(table, "dataset " + ", ".join(data))
    return PreparedData(table, cache, int(corrupt.sum()), int(route_dependent.sum()))


def split_metrics(result: dict, table: FrameTable) -> dict:
    """Full metrics of one evaluated split (per town/weather looked up through the dataset index)."""
    idx = result["index"]
    return classification_metrics(result["labels"], result["probs"], CLASSES, towns=table.town[idx],
                                  weathers=table.weather[idx], loss=result["loss"])


def write_eval_artifacts(out: Path, results: dict[str, dict], datasets: dict[str, FrameDataset], seed: int) -> None:
    """confusion_matrix.png and predictions.png for evaluated splits (predictions from the last split given)."""
    from training.plots import pick_examples, plot_confusion, plot_predictions

    evaluated = {k: v for k, v in results.items() if len(v["labels"])}
    if not evaluated:
        return
    cms = {}
    for name, r in evaluated.items():
        cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
        np.add.at(cm, (r["labels"], r["probs"].argmax(1)), 1)
        cms[name] = cm.tolist()
    plot_confusion(cms, CLASSES, out / "confusion_matrix.png")
    name = list(evaluated)[-1]
    r, ds = evaluated[name], datasets[name]
    pick = pick_examples(r["labels"], r["probs"], n=24, seed=seed)
    frames = [ds.frame(int(r["index"][k])) for k in pick]
    captions = [f"{ds.table.town[r['index'][k]]} {ds.table.weather[r['index'][k]]}" for k in pick]
    plot_predictions(frames, r["labels"][pick], r["probs"][pick], CLASSES, out / "predictions.png", captions)


def _write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def _default_out(arch: str) -> Path:
    return Path("runs") / "train" / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------------ main work

def train(cfg: TrainConfig) -> TrainResult:
    """Run a whole training as configured; returns the run directory and final metrics.

    Raises:
        DatasetError / ValueError: bad data or flags (one-line messages); ContractError (a
            ValueError) when the datasets were collected with different cameras or label definitions.
        NonFiniteLossError: the loss diverged.
    """
    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = read_checkpoint(cfg.resume)
        if "optimizer" not in resume_ckpt:
            raise ValueError(f"--resume {cfg.resume}: not a last.pt (no optimizer state); resume from weights/last.pt")
        recipe = {k: v for k, v in resume_ckpt["config"]["recipe"].items() if k not in RESUME_OVERRIDES}
        cfg = TrainConfig(**{**recipe, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES}})
        if cfg.out is None:
            cfg.out = str(Path(cfg.resume).resolve().parent.parent)

    device_type = resolve_device(cfg.device).type
    with ddp.distributed(device_type) as info, fork_safe_cv2():
        return _train(cfg, info, resume_ckpt)


def _train(cfg: TrainConfig, info: ddp.DistInfo, resume_ckpt: dict | None) -> TrainResult:
    """The four steps: data, model, fit, report."""
    rt = Runtime.create(cfg, info)
    seed_everything(cfg.seed + info.rank)
    out = Path(ddp.broadcast_object(str(cfg.out or _default_out(cfg.arch)), info))
    if info.is_main:
        (out / "weights").mkdir(parents=True, exist_ok=True)
    data = build_data(cfg, rt, out, resume_ckpt)
    model, model_config = build_model(cfg, rt, data.contract)
    state = FitState.start(cfg, model, resume_ckpt, out)
    if resume_ckpt is not None:   # the next epoch draws what it would have drawn without the interruption
        restore_rng_state(resume_ckpt.get("rng"), *_rng_streams(data))
    writer = None
    if info.is_main:
        from training.plots import summary_writer
        writer = summary_writer(out / "tb")
    run = TrainRun(cfg, rt, out, model, model_config, nn.CrossEntropyLoss(), data, writer)
    fit(run, state)
    return report(run, state)


# --- data

@dataclass
class TrainData:
    """The data step's result: frames, splits, datasets, loaders and the datasets' contract."""
    prepared: PreparedData
    tables: dict[str, FrameTable]           # train / val / test
    datasets: dict[str, FrameDataset]
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]     # val / test, those that have frames
    contract: Contract | None               # camera + labels of every dataset (None: none recorded)
    batch_transform: object = None          # the GPU recipe's per-batch augmentation (--gpu-augment), else None
    sample_weight: torch.Tensor | None = None  # loss weight per training frame (--horizon-weight), else None

    @property
    def table(self) -> FrameTable:
        return self.prepared.table

    def summary(self, dirs: tuple[str, ...]) -> dict:
        """``metrics["data"]``."""
        return {"dirs": list(dirs), "frames": len(self.table), "corrupt_skipped": self.prepared.corrupt_skipped,
                "route_dependent_skipped": self.prepared.route_dependent_skipped, "towns": self.table.towns(),
                **{f"{k}_frames": len(v) for k, v in self.tables.items()}}


def build_data(cfg: TrainConfig, rt: Runtime, out: Path, resume_ckpt: dict | None) -> TrainData:
    """Frames, the shared camera/label contract, the split (reloaded on resume), datasets and loaders.

    Raises:
        ContractError: the datasets (or the resumed run and the datasets) differ in camera/labels.
    """
    info = rt.info
    contract = _training_contract(cfg.data, resume_ckpt, info)    # before the cache: refuse mixed data at once
    prepared = prepare_data(cfg.data, cfg.img_size, cfg.cache_dir, info, cfg.progress, cfg.crop_rows)
    table = prepared.table
    split = load_split(out / "split.json", table) if resume_ckpt and (out / "split.json").is_file() \
        else make_split(table, SplitConfig(cfg.val_split, cfg.val_towns, cfg.test_towns, cfg.seed))
    tables = {name: table.subset(idx) for name, idx in split.indices.items()}
    check_classes(tables["train"], "training split")
    if info.is_main:
        split.save(out / "split.json", table)
        import yaml
        (out / "args.yaml").write_text(yaml.safe_dump(cfg.recipe(), sort_keys=False))
        log.info("frames: train %d, val %d, test %d (%d corrupt, %d route-dependent skipped); towns %s",
                 *(len(tables[k]) for k in ("train", "val", "test")), prepared.corrupt_skipped,
                 prepared.route_dependent_skipped, ", ".join(table.towns()))
    dsets, gpu_aug = _datasets(cfg, prepared.cache, tables, info.rank, rt.device)
    train_loader = make_loader(dsets["train"], cfg.batch_size, cfg.workers, rt.device, train=True, info=info,
                               seed=cfg.seed)
    eval_loaders = {k: make_loader(dsets[k], cfg.batch_size * 2, cfg.workers, rt.device, train=False, info=info,
                                   seed=cfg.seed) for k in ("val", "test") if len(dsets[k])}
    sample_weight = None
    if cfg.horizon_weight != 1.0:
        from training.horizon import horizon_weights
        sample_weight = torch.from_numpy(horizon_weights(tables["train"], cfg.horizon_weight)).to(rt.device)
    return TrainData(prepared, tables, dsets, train_loader, eval_loaders, contract, gpu_aug, sample_weight)


def _training_contract(data: tuple[str, ...], resume_ckpt: dict | None, info: ddp.DistInfo) -> Contract | None:
    """The datasets' shared contract; on --resume it must also match the one the run started with."""
    try:
        contract = load_contract([d for d in data if Path(d).is_dir()])   # a missing one: prepare_data says so
    except TypeError as e:   # e.g. "fov": null in a hand-written dataset.json
        raise DatasetError(f"unreadable camera/label record in a dataset.json of {', '.join(data)} ({e}); "
                           "record width, height and fov as numbers") from None
    if contract is not None and info.is_main:
        c = contract.camera
        log.info("contract: camera %dx%d fov %g, label lookahead %g m, junction policy %s", c.width, c.height,
                 c.fov, contract.label.lookahead_m, contract.label.junction_policy)
    before = Contract.from_json((resume_ckpt or {}).get("config", {}).get("contract"))
    if before is not None and contract is not None and before.differences(contract):
        raise ContractError(f"--resume: the datasets differ from the run's camera/label contract: "
                            f"{describe_differences(contract, before, 'datasets', 'checkpoint')}")
    return contract


def _datasets(cfg: TrainConfig, cache: FrameCache, tables: dict[str, FrameTable], rank: int,
              device: torch.device) -> tuple[dict[str, FrameDataset], object]:
    """Augmented training set (seeded per rank), plain val/test sets, normalised as the architecture wants;
    with ``--gpu-augment`` also the per-batch GPU half of the recipe (else None)."""
    dcfg = data_config(cfg.arch)
    eval_tf = ClassificationPresetEval(mean=dcfg["mean"], std=dcfg["std"])
    train_tf = (ClassificationPresetTrain(img_size=cfg.img_size, mean=dcfg["mean"], std=dcfg["std"],
                                          hflip_prob=cfg.hflip_prob, seed=cfg.seed + rank)
                if cfg.augment else eval_tf)
    gpu_aug = None
    if cfg.gpu_augment and cfg.augment:
        from datasets.gpu_augment import gpu_train_pipeline
        train_tf, gpu_aug = gpu_train_pipeline(cfg.img_size, dcfg["mean"], dcfg["std"], cfg.hflip_prob,
                                               cfg.seed + rank, device)
    return {"train": FrameDataset(cache, tables["train"], train_tf),
            "val": FrameDataset(cache, tables["val"], eval_tf),
            "test": FrameDataset(cache, tables["test"], eval_tf)}, gpu_aug


# --- model

def model_config(cfg: TrainConfig, contract: Contract | None) -> dict:
    """The checkpoint ``config`` (see :mod:`training.checkpoint`), the contract included."""
    dcfg = data_config(cfg.arch)
    return {"arch": cfg.arch, "num_classes": len(CLASSES), "classes": list(CLASSES),
            "img_size": cfg.img_size, "crop_rows": list(cfg.crop_rows), "mean": [float(v) for v in dcfg["mean"]],
            "std": [float(v) for v in dcfg["std"]], "color_order": dcfg["color_order"],
            "dropout": cfg.dropout, "tta": cfg.tta, "recipe": cfg.recipe(),
            "contract": contract.to_json() if contract is not None else None}


def build_model(cfg: TrainConfig, rt: Runtime, contract: Contract | None) -> tuple[nn.Module, dict]:
    """The network on its device, and the checkpoint config that describes it."""
    try:
        model = create_model(cfg.arch, num_classes=len(CLASSES), dropout=cfg.dropout, weights=cfg.weights)
    except RuntimeError as e:  # offline ImageNet weights: one line suggesting --weights none / PATH
        raise ValueError(str(e)) from None
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, model_config(cfg, contract)


# --- fit

@dataclass
class FitState:
    """What the epoch loop carries from one epoch to the next (and last.pt keeps for --resume)."""
    stopper: EarlyStopping
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_state: dict | None = None          # CPU copy of the best weights so far
    stopped_early: bool = False
    resume_optimizer: dict | None = None    # optimizer state restored if the resumed epoch's stage matches
    resume_stage: int | None = None

    @classmethod
    def start(cls, cfg: TrainConfig, model: nn.Module, resume_ckpt: dict | None, out: Path) -> "FitState":
        """A fresh state, or the one of ``resume_ckpt`` (weights loaded into ``model``)."""
        state = cls(EarlyStopping(cfg.patience))
        if resume_ckpt is None:
            return state
        model.load_state_dict(resume_ckpt["state_dict"])
        state.history = list(resume_ckpt.get("history", []))
        for k, v in resume_ckpt.get("early_stop", {}).items():
            setattr(state.stopper, k, v)
        state.start_epoch = int(resume_ckpt["epoch"])
        state.resume_optimizer, state.resume_stage = resume_ckpt["optimizer"], resume_ckpt.get("stage")
        if (out / "weights" / "best.pt").is_file():
            state.best_state = read_checkpoint(out / "weights" / "best.pt")["state_dict"]
        log.info("resumed %s at epoch %d (best val loss %.4f at epoch %d)", cfg.resume, state.start_epoch,
                 state.stopper.best_loss, state.stopper.best_epoch)
        return state


@dataclass
class TrainRun:
    """Everything the fit and report steps work on (built once by :func:`_train`)."""
    cfg: TrainConfig
    rt: Runtime
    out: Path
    model: nn.Module
    model_config: dict
    criterion: nn.Module
    data: TrainData
    writer: object | None = None            # TensorBoard SummaryWriter, rank 0 only


def fit(run: TrainRun, state: FitState) -> None:
    """Epochs from ``state.start_epoch``: switch stage when due, train, validate, checkpoint, stop early."""
    cfg = run.cfg
    stage, net, optimizer = None, run.model, None
    for epoch in range(state.start_epoch, cfg.epochs):
        if stage_of(epoch, cfg) != stage:
            stage = stage_of(epoch, cfg)
            net, optimizer = _enter_stage(run, state, stage, epoch)
        row = _run_epoch(run, net, optimizer, epoch, stage)
        _end_epoch(run, state, row, optimizer)
        if state.stopper.should_stop:
            state.stopped_early = True
            if run.rt.info.is_main:
                log.info("early stopping: val loss has not improved for %d epochs (best %.4f at epoch %d)",
                         cfg.patience, state.stopper.best_loss, state.stopper.best_epoch)
            break


def _enter_stage(run: TrainRun, state: FitState, stage: int, epoch: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Freeze/unfreeze for ``stage``, a fresh optimizer (the resumed one on the resumed epoch), DDP wrapper."""
    cfg, rt, model = run.cfg, run.rt, run.model
    params = set_trainable(model, cfg.arch, stage, cfg)
    optimizer = make_optimizer(params, cfg)
    if state.resume_optimizer is not None and epoch == state.start_epoch and state.resume_stage == stage:
        optimizer.load_state_dict(state.resume_optimizer)
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
           if rt.info.enabled else model)
    if rt.info.is_main:
        log.info("stage %d: %d of %d parameter tensors trainable (%d weights)", stage, len(params),
                 len(list(model.parameters())), sum(p.numel() for p in params))
    return net, optimizer


def _run_epoch(run: TrainRun, net: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, stage: int) -> dict:
    """Train one epoch and validate; returns its history row."""
    cfg, loader = run.cfg, run.data.train_loader
    for g in optimizer.param_groups:
        g["lr"] = lr_at(epoch, cfg)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    set_train_mode(net)
    tr = train_one_epoch(net, run.criterion, optimizer, loader, epoch + 1, run.rt,
                         desc=f"epoch {epoch + 1}/{cfg.epochs} stage {stage}", batch_transform=run.data.batch_transform,
                         sample_weight=run.data.sample_weight)
    va = evaluate(run.model, run.criterion, run.data.eval_loaders["val"], run.rt, desc="val")
    return {"epoch": epoch + 1, "stage": stage, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
            "images_per_s": tr["images_per_s"], "epoch_s": tr["seconds"], "data_wait_frac": tr["data_wait_frac"]}


def _end_epoch(run: TrainRun, state: FitState, row: dict, optimizer: torch.optim.Optimizer) -> None:
    """Record the row, keep the best weights; on rank 0 log it and write history, TensorBoard, best/last.pt."""
    cfg, model, epoch, stage = run.cfg, run.model, row["epoch"], row["stage"]
    state.history.append(row)
    improved = state.stopper.step(epoch, row["val_loss"], counts=stage == stage_of(cfg.epochs - 1, cfg))
    if improved:
        state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    if not run.rt.info.is_main:
        return
    log.info("epoch %d/%d stage %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | %.0f img/s "
             "(data wait %.0f%%)%s", epoch, cfg.epochs, stage, row["train_loss"], row["train_acc"], row["val_loss"],
             row["val_acc"], row["images_per_s"], 100 * row["data_wait_frac"], " *best*" if improved else "")
    for k in ("train_loss", "val_loss", "train_acc", "val_acc", "lr", "images_per_s"):
        run.writer.add_scalar(k.replace("_", "/", 1), row[k], epoch)
    _write_history(run.out / "history.csv", state.history)
    val = {"val_loss": row["val_loss"], "val_acc": row["val_acc"]}
    if improved:
        save_checkpoint(run.out / "weights" / "best.pt", model, run.model_config, epoch, val)
    save_checkpoint(run.out / "weights" / "last.pt", model, run.model_config, epoch, val,
                    optimizer=optimizer.state_dict(), stage=stage, history=state.history,
                    early_stop=state.stopper.state(), rng=capture_rng_state(*_rng_streams(run.data)))


def _rng_streams(data: TrainData) -> tuple[dict, object]:
    """The random streams an epoch draws from (shuffle order + worker seeds, augmentation), for --resume."""
    return {"sampler": data.train_loader.generator}, getattr(data.datasets["train"], "transform", None)


# --- report

def report(run: TrainRun, state: FitState) -> TrainResult:
    """Final metrics with the best weights restored; rank 0 writes metrics.json, best.pt and the plots."""
    if state.best_state is not None:
        run.model.load_state_dict(state.best_state)
    net = with_tta(run.model, run.cfg.tta)   # what the checkpoint will run as, so T is fitted on it
    results = {k: evaluate(net, run.criterion, loader, run.rt, desc=k)
               for k, loader in run.data.eval_loaders.items()}
    metrics = final_metrics(run, state, results)
    if run.rt.info.is_main:
        _write_report(run, state, metrics, results)
    return TrainResult(run.out, metrics, state.history)


def final_metrics(run: TrainRun, state: FitState, results: dict[str, dict]) -> dict:
    """``metrics.json``: best epoch, data summary, contract, val/test metrics, throughput."""
    tables, history = run.data.tables, state.history
    return {
        "best_epoch": state.stopper.best_epoch, "epochs_run": len(history), "stopped_early": state.stopped_early,
        "data": run.data.summary(run.cfg.data),
        "contract": run.model_config["contract"],
        "val": split_metrics(results["val"], tables["val"]),
        "test": split_metrics(results["test"], tables["test"]) if "test" in results else None,
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])) if history else None,
    }


def _write_report(run: TrainRun, state: FitState, metrics: dict, results: dict[str, dict]) -> None:
    from training.plots import plot_curves, plot_reliability

    cfg, out, best_epoch = run.cfg, run.out, state.stopper.best_epoch
    # temperature fitted on the val logits: stored in the checkpoint, applied at inference (p(curve) / T)
    calib = calibrate(results["val"]["logits"], results["val"]["labels"])
    run.model_config["temperature"] = calib["temperature"]
    metrics["calibration"] = {k: v for k, v in calib.items() if not k.startswith("reliability")}
    write_json_atomic(out / "metrics.json", metrics)
    keys = ("accuracy", "macro_f1", "roc_auc", "loss")
    save_checkpoint(out / "weights" / "best.pt", run.model, run.model_config, best_epoch,
                    {"val": {k: metrics["val"][k] for k in keys},
                     "test": None if metrics["test"] is None else {k: metrics["test"][k] for k in keys}})
    stage2_epoch = cfg.freeze_epochs + 1 if cfg.pretrained and 0 < cfg.freeze_epochs < cfg.epochs else None
    plot_curves(state.history, out / "curves.png", stage2_epoch=stage2_epoch, best_epoch=best_epoch)
    plot_reliability(calib, out / "reliability.png")
    write_eval_artifacts(out, results, run.data.datasets, cfg.seed)
    run.writer.add_scalar("val/accuracy_final", metrics["val"]["accuracy"], best_epoch)
    run.writer.close()
    held = metrics["test"] or metrics["val"]
    log.info("best epoch %d; %s accuracy %.4f (macro F1 %.4f) on %s; run directory %s", best_epoch,
             "test" if metrics["test"] else "val", held["accuracy"], held["macro_f1"],
             ", ".join(held["accuracy_per_town"]), out)


def main(argv: list[str] | None = None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(args)
        check_output_path(cfg.out, "--out", is_dir=True)
    except ValueError as e:
        parser.error(str(e))
    try:
        with cli_errors(debug=False, prog="carla-train"):   # Ctrl-C: one line; last.pt is written atomically
            result = train(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if rank == 0:
        m = result.metrics
        for name in ("val", "test"):
            if m[name]:
                towns = ", ".join(f"{t} {v['accuracy']:.3f}" for t, v in m[name]["accuracy_per_town"].items())
                print(f"{name}: accuracy {m[name]['accuracy']:.4f}, macro F1 {m[name]['macro_f1']:.4f} ({towns})")
        print(f"weights: {result.out / 'weights' / 'best.pt'}")


if __name__ == "__main__":
    main()

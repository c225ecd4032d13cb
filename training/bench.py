"""Training throughput benchmark (images/s): the model step alone, and optionally the data pipeline.

Examples::

    python -m training.bench --arch efficientnet_b0 --img-size 224 --batch-size 32 --steps 10
    python -m training.bench --device cuda --amp --channels-last --batch-size 256 --steps 50
    python -m training.bench --data data/town123 --workers 8 --img-size 224   # + loader images/s

The model step uses random tensors (forward, backward, AdamW step), so it measures compute only;
``--data`` also times the training DataLoader (memmapped cache + augmentation + collation), which
must outpace the model step for the GPU to stay busy.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from training.models import create_model, list_models
from training.train import DEVICES, fork_safe_cv2, resolve_device

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    arch: str = "efficientnet_b0"
    img_size: int = 224
    batch_size: int = 32
    steps: int = 10
    warmup: int = 3
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    data: tuple[str, ...] = ()
    workers: int = 4

    def __post_init__(self):
        if self.arch not in list_models():
            raise ValueError(f"--arch {self.arch!r}: unknown; valid: {', '.join(list_models())}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("--steps and --batch-size must be >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r}: unknown; valid: {', '.join(DEVICES)}")


def bench_model(cfg: BenchConfig) -> dict:
    """Training-step images/s of ``cfg.arch`` on random input."""
    device = resolve_device(cfg.device)
    model = create_model(cfg.arch, weights="none").to(device).train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    crit = nn.CrossEntropyLoss()
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 2, (cfg.batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for _ in range(cfg.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
            "images_per_s": cfg.batch_size * cfg.steps / dt, "step_ms": 1000 * dt / cfg.steps}


def bench_loader(cfg: BenchConfig) -> dict:
    """Images/s of the augmented training DataLoader over ``cfg.data`` (two passes' worth, first batch excluded)."""
    from datasets.dataset import FrameDataset
    from datasets.presets import ClassificationPresetTrain
    from training import ddp
    from training.train import make_loader, prepare_data

    device = resolve_device(cfg.device)
    prepared = prepare_data(cfg.data, cfg.img_size, None, ddp.DistInfo(), progress=True)
    ds = FrameDataset(prepared.cache, prepared.table, ClassificationPresetTrain(img_size=cfg.img_size, seed=0))
    loader = make_loader(ds, cfg.batch_size, cfg.workers, device, train=True, info=ddp.DistInfo(), seed=0)
    n, t0 = 0, None
    for _ in range(2):
        for x, _, _ in loader:
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += len(x)
    dt = time.perf_counter() - t0
    return {"loader_images_per_s": n / dt, "workers": cfg.workers}


def main(argv: list[str] | None = None) -> None:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=d.arch, choices=list_models(), help="model architecture")
    p.add_argument("--img-size", type=int, default=d.img_size, help="square input side, px")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="compute device")
    p.add_argument("--amp", action="store_true", help="autocast (CUDA: bf16 where supported, else fp16)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--data", nargs="*", default=[], metavar="DIR", help="also time the training DataLoader on this data")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers for --data")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = BenchConfig(**vars(args))
    except ValueError as e:
        p.error(str(e))
    torch.backends.cudnn.benchmark = True
    try:
        r = bench_model(cfg)
        with fork_safe_cv2():
            lr = bench_loader(cfg) if cfg.data else None
    except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError
        p.exit(2, f"error: {e}\n")
    print(f"{cfg.arch} @{cfg.img_size}px batch {cfg.batch_size} on {r['device']} (amp {r['amp']}, channels_last "
          f"{cfg.channels_last}): {r['images_per_s']:.1f} train images/s ({r['step_ms']:.1f} ms/step)")
    if lr:
        print(f"training DataLoader ({lr['workers']} workers, augmentation on): {lr['loader_images_per_s']:.0f} images/s")


if __name__ == "__main__":
    main()

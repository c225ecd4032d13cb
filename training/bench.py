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
    gpu_augment: bool = False
    json: str | None = None

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

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t_first = time.perf_counter()
    step()                      # first step: cudnn.benchmark autotuning + lazy CUDA/cuBLAS init
    sync()
    first_ms = 1000 * (time.perf_counter() - t_first)
    for _ in range(max(cfg.warmup - 1, 0)):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
            "images_per_s": cfg.batch_size * cfg.steps / dt, "step_ms": 1000 * dt / cfg.steps,
            "first_step_ms": first_ms}


def bench_loader(cfg: BenchConfig) -> dict:
    """Where a training epoch's time goes on ``cfg.data``: cache build, worker start, loader img/s, and the
    full loop (loader + transfer + GPU augmentation + model step) split into data wait vs step time."""
    from datasets.dataset import FrameDataset
    from datasets.presets import ClassificationPresetTrain
    from training import ddp
    from training.train import make_loader, prepare_data

    device = resolve_device(cfg.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    import tempfile
    cache_dir = tempfile.mkdtemp(prefix="bench_cache_")      # a cold cache, so its build is measured
    t = time.perf_counter()
    prepare_data(cfg.data, cfg.img_size, cache_dir, ddp.DistInfo(), progress=False)
    cache_s = time.perf_counter() - t
    t = time.perf_counter()
    prepared = prepare_data(cfg.data, cfg.img_size, cache_dir, ddp.DistInfo(), progress=False)
    table, cache = prepared.table, prepared.cache
    cache_hit_s = time.perf_counter() - t
    gpu_aug = None
    if cfg.gpu_augment:
        from datasets.gpu_augment import gpu_train_pipeline
        from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD
        tf, gpu_aug = gpu_train_pipeline(cfg.img_size, IMAGENET_MEAN, IMAGENET_STD, 0.5, 0, device)
    else:
        tf = ClassificationPresetTrain(img_size=cfg.img_size, seed=0)
    ds = FrameDataset(cache, table, tf)
    loader = make_loader(ds, cfg.batch_size, cfg.workers, device, train=True, info=ddp.DistInfo(), seed=0)
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    first_batch_s = time.perf_counter() - t      # worker start + first batch
    n, t0 = 0, time.perf_counter()
    for x, _, _ in it:
        n += len(x)
    for x, _, _ in loader:                        # persistent workers: the second pass starts warm
        n += len(x)
    loader_ips = n / max(time.perf_counter() - t0, 1e-9)

    model = create_model(cfg.arch, weights="none").to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    wait = step_s = 0.0
    seen, steps = 0, 0
    t_loop = tick = time.perf_counter()
    for x, y, _ in loader:
        wait += time.perf_counter() - tick
        s0 = time.perf_counter()
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        if gpu_aug is not None:
            x = gpu_aug(x)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()                                    # per-step sync: honest step time (the trainer does not sync)
        step_s += time.perf_counter() - s0
        seen, steps = seen + len(y), steps + 1
        tick = time.perf_counter()
    loop_s = time.perf_counter() - t_loop
    return {"workers": cfg.workers, "gpu_augment": cfg.gpu_augment, "frames": len(ds),
            "cache_build_s": cache_s, "cache_hit_s": cache_hit_s, "worker_start_first_batch_s": first_batch_s,
            "loader_images_per_s": loader_ips, "loop_images_per_s": seen / max(loop_s, 1e-9),
            "loop_data_wait_s": wait, "loop_step_s": step_s, "loop_s": loop_s, "loop_steps": steps}


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
    p.add_argument("--gpu-augment", action="store_true", help="time the GPU recipe (datasets/gpu_augment.py)")
    p.add_argument("--json", default=None, help="also write the figures here as JSON")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN autotune (training's default is off; compare the first-step cost with and without)")
    args = p.parse_args(argv)
    cudnn_benchmark = args.cudnn_benchmark
    del args.cudnn_benchmark
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = BenchConfig(**vars(args))
    except ValueError as e:
        p.error(str(e))
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        r = bench_model(cfg)
        with fork_safe_cv2():
            lr = bench_loader(cfg) if cfg.data else None
    except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError
        p.exit(2, f"error: {e}\n")
    print(f"{cfg.arch} @{cfg.img_size}px batch {cfg.batch_size} on {r['device']} (amp {r['amp']}, channels_last "
          f"{cfg.channels_last}): {r['images_per_s']:.1f} train images/s ({r['step_ms']:.1f} ms/step; first step "
          f"{r['first_step_ms']:.0f} ms = lazy CUDA init{' + cudnn.benchmark autotune' if cudnn_benchmark else ', autotune off'})")
    if lr:
        recipe = "GPU recipe (geometric in workers, photometric on device)" if lr["gpu_augment"] else "albumentations CPU recipe"
        print(f"training DataLoader ({lr['workers']} workers, {recipe}): {lr['loader_images_per_s']:.0f} images/s")
        print(f"first-epoch costs: cache build {lr['cache_build_s']:.1f} s (cached: {lr['cache_hit_s']:.2f} s), "
              f"worker start + first batch {lr['worker_start_first_batch_s']:.2f} s, cudnn autotune (first step) "
              f"{r['first_step_ms'] / 1000:.2f} s")
        print(f"training loop over {lr['frames']} frames ({lr['loop_steps']} steps): {lr['loop_images_per_s']:.0f} images/s; "
              f"data wait {lr['loop_data_wait_s']:.2f} s vs step {lr['loop_step_s']:.2f} s of {lr['loop_s']:.2f} s "
              f"({100 * lr['loop_data_wait_s'] / max(lr['loop_s'], 1e-9):.0f} % waiting for data)")
    if cfg.json:
        import json
        from pathlib import Path
        Path(cfg.json).write_text(json.dumps({"config": vars(cfg), "model": r, "loader": lr}, indent=1, default=str))


if __name__ == "__main__":
    main()

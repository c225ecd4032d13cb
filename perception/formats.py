"""The one table of model formats and inference backends.

Export (which suffix, which options) and the classifier (which backend can read which file,
which one ``auto`` picks) both read these tables, so adding a format or a backend is one row,
like ultralytics' ``export_formats()``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    """One artifact type.

    Attributes:
        name: human name, e.g. ``ONNX``.
        arg: the CLI / API value, e.g. ``onnx``.
        suffix: file suffix including the dot.
        gpu: whether producing or running it needs an NVIDIA GPU.
        options: export options that apply to it (names of ExportConfig fields).
        backends: backends that can run the file directly, best first.
    """
    name: str
    arg: str
    suffix: str
    gpu: bool
    options: tuple[str, ...]
    backends: tuple[str, ...]


FORMATS: tuple[Format, ...] = (
    Format("PyTorch checkpoint", "torch", ".pt", False, (), ("torch", "torch-cuda")),
    Format("ONNX", "onnx", ".onnx", False, ("fp16", "dynamic_batch", "opset"), ("onnxruntime", "tensorrt")),
    Format("TensorRT engine", "engine", ".engine", True, ("fp16", "dynamic_batch", "workspace"), ("tensorrt",)),
)


@dataclass(frozen=True)
class BackendInfo:
    """One inference backend: the module holding its class and the format it reads natively."""
    name: str
    reads: str          # Format.arg it runs; other formats are converted (e.g. .pt -> .onnx export)
    gpu: bool
    description: str


BACKEND_INFO: tuple[BackendInfo, ...] = (
    BackendInfo("tensorrt", "engine", True, "TensorRT engine, CUDA device buffers, execute_async_v3"),
    BackendInfo("onnxruntime", "onnx", False, "ONNX Runtime, best provider: TensorRT EP > CUDA EP > OpenVINO EP > CPU EP"),
    BackendInfo("torch-cuda", "torch", True, "PyTorch on CUDA: FP16, channels_last, CUDA-graph replay"),
    BackendInfo("torch", "torch", False, "PyTorch eager on the CPU (the reference)"),
)
BACKEND_NAMES: tuple[str, ...] = tuple(b.name for b in BACKEND_INFO)


def format_for_path(path: str | os.PathLike) -> Format:
    """The Format of ``path`` by suffix. Raises ValueError naming the valid suffixes."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if fmt.suffix == suffix:
            return fmt
    valid = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS)
    raise ValueError(f"unknown model file type {suffix or '(no suffix)'!r} for {str(path)!r}; valid: {valid}")


def format_by_arg(arg: str) -> Format:
    for fmt in FORMATS:
        if fmt.arg == arg:
            return fmt
    raise ValueError(f"unknown format {arg!r}; valid: {', '.join(f.arg for f in FORMATS)}")


def backend_info(name: str) -> BackendInfo:
    for info in BACKEND_INFO:
        if info.name == name:
            return info
    raise ValueError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKEND_NAMES)}")


def check_options(fmt: Format, **options) -> None:
    """Raise ValueError if a truthy option does not apply to ``fmt`` (e.g. ``workspace`` for ONNX only)."""
    bad = [k for k, v in options.items() if v and k not in fmt.options]
    if bad:
        raise ValueError(f"option(s) {', '.join(bad)} do not apply to {fmt.name}; "
                         f"valid for {fmt.arg}: {', '.join(fmt.options) or 'none'}")


def default_cache_dir() -> Path:
    """Where on-the-fly ONNX exports and TensorRT timing caches go (``$CARLA_PERCEPTION_CACHE``)."""
    env = os.environ.get("CARLA_PERCEPTION_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "carla-perception"

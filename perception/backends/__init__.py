"""Inference backends behind one Protocol, looked up by name in :data:`BACKENDS`.

Every backend takes the same input (float32 ``N x 3 x S x S``, already preprocessed) and returns
float32 ``N x num_classes`` logits, so the classifier, the bench and the tests treat them alike.
Heavy dependencies (onnxruntime, tensorrt, CUDA) are imported inside the backend that needs them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from perception.meta import ModelMeta


@runtime_checkable
class Backend(Protocol):
    """One way to run the classifier network.

    Attributes:
        name: registry name (``torch``, ``torch-cuda``, ``onnxruntime``, ``tensorrt``).
        max_batch: largest batch one :meth:`infer` call accepts (1 for static-batch files).
        precision: what the network really computes in (``fp32``, ``fp16``, ``bf16``).
    """
    name: str
    max_batch: int
    precision: str

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 N x 3 x S x S -> float32 N x num_classes logits (N <= max_batch)."""
        ...

    def warmup(self, n: int, img_size: int) -> None:
        """Run ``n`` throw-away inferences so lazy init (allocations, kernels, graphs) happens now."""
        ...

    def describe(self) -> str:
        """Device / provider in words, for logs and the bench."""
        ...


def unavailable_reason(name: str) -> str | None:
    """None if backend ``name`` can run on this machine, else why not (one line)."""
    return get_backend_class(name).unavailable_reason()


def available_backends() -> list[str]:
    """Backends usable here, in the ``auto`` preference order."""
    from perception.formats import BACKEND_NAMES
    return [n for n in BACKEND_NAMES if unavailable_reason(n) is None]


def get_backend_class(name: str) -> type:
    from perception.formats import BACKEND_NAMES
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKEND_NAMES)}")
    return BACKENDS[name]


def load_backend(name: str, path: Path, meta: ModelMeta, **options) -> Backend:
    """Instantiate backend ``name`` on ``path`` (already in the format the backend reads)."""
    return get_backend_class(name).from_file(Path(path), meta, **options)


def warmup_input(img_size: int, batch: int = 1) -> np.ndarray:
    """A deterministic non-constant input for warm-up calls (constant inputs can hit fast paths)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 3, img_size, img_size), dtype=np.float32)


from perception.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from perception.backends.tensorrt_backend import TensorRTBackend  # noqa: E402
from perception.backends.torch_backend import TorchBackend, TorchCudaBackend  # noqa: E402

BACKENDS: dict[str, type] = {
    TensorRTBackend.name: TensorRTBackend,
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    TorchCudaBackend.name: TorchCudaBackend,
    TorchBackend.name: TorchBackend,
}

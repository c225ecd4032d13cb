"""PyTorch backends: ``torch`` (CPU eager, the reference) and ``torch-cuda`` (FP16, channels_last, CUDA graph)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from perception.meta import ModelMeta, load_checkpoint

log = logging.getLogger(__name__)


def _warm(backend, n: int, img_size: int) -> None:
    from perception.backends import warmup_input
    x = warmup_input(img_size)
    for _ in range(n):
        backend.infer(x)


class TorchBackend:
    """Eager PyTorch on the CPU: the numerical reference every other backend is compared with."""
    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().float()
        self.max_batch = 1 << 16
        self.precision = "fp32"

    @staticmethod
    def unavailable_reason() -> str | None:
        return None

    @classmethod
    def from_file(cls, path: Path, meta: ModelMeta, **options) -> "TorchBackend":
        model, _ = load_checkpoint(path)
        return cls(model, **options)

    def infer(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).float().numpy()

    def warmup(self, n: int, img_size: int) -> None:
        _warm(self, n, img_size)

    def describe(self) -> str:
        return f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads"


class TorchCudaBackend:
    """PyTorch on an NVIDIA GPU for users without TensorRT.

    FP16 weights and activations (logits returned as float32), channels_last memory format
    (tensor-core friendly convolutions), and for batch 1 a captured CUDA graph: one replay
    launches every kernel of the network, which removes Python/launch overhead per frame.
    """
    name = "torch-cuda"

    def __init__(self, model: nn.Module, fp16: bool = True, channels_last: bool = True,
                 cuda_graph: bool = True, device: str = "cuda") -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.precision = "fp16" if fp16 else "fp32"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, self.dtype).to(memory_format=self.memory_format)
        self.use_graph = cuda_graph
        self.max_batch = 1 << 16
        self._graph = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None

    @staticmethod
    def unavailable_reason() -> str | None:
        return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"

    @classmethod
    def from_file(cls, path: Path, meta: ModelMeta, **options) -> "TorchCudaBackend":
        reason = cls.unavailable_reason()
        if reason:
            raise RuntimeError(f"backend 'torch-cuda' unavailable: {reason}")
        model, _ = load_checkpoint(path)
        return cls(model, **options)

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        xt = torch.from_numpy(x).to(self.device, non_blocking=False)
        return xt.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _capture(self, img_size: int) -> None:
        """Record one batch-1 forward pass into a CUDA graph (after side-stream warm-up, as torch requires)."""
        self._static_in = torch.zeros((1, 3, img_size, img_size), device=self.device,
                                      dtype=self.dtype).contiguous(memory_format=self.memory_format)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                self.model(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            self._static_out = self.model(self._static_in)
        log.debug("captured a CUDA graph for batch 1 at %d px", img_size)

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.use_graph and x.shape[0] == 1:
            if self._graph is None or self._static_in.shape[-1] != x.shape[-1]:
                self._capture(x.shape[-1])
            self._static_in.copy_(self._to_device(x))
            self._graph.replay()
            return self._static_out.float().cpu().numpy()
        with torch.inference_mode():
            return self.model(self._to_device(x)).float().cpu().numpy()

    def warmup(self, n: int, img_size: int) -> None:
        _warm(self, n, img_size)

    def describe(self) -> str:
        props = torch.cuda.get_device_properties(self.device)
        return (f"{props.name} (sm_{props.major}{props.minor}), torch {torch.__version__}, "
                f"{'fp16' if self.dtype == torch.float16 else 'fp32'}, "
                f"{'channels_last' if self.memory_format == torch.channels_last else 'NCHW'}, "
                f"cuda_graph={'on' if self.use_graph else 'off'}")

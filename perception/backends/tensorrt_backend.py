"""TensorRT backend: a cached, machine-checked engine run through CUDA device buffers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from perception.meta import ModelMeta


class TensorRTBackend:
    """Runs a ``.engine`` with :class:`perception.tensorrt_engine.TensorRTRunner`."""
    name = "tensorrt"

    def __init__(self, engine_path: Path, cuda_graph: bool = False, device: str = "cuda",
                 gpu_preprocess: bool = True) -> None:
        self.gpu_preprocess = gpu_preprocess
        from perception import tensorrt_engine as te
        engine_path = te.validate_engine(Path(engine_path))
        side = te.read_sidecar(engine_path)
        self.engine_path = engine_path
        self.key = te.EngineKey(**side["key"])
        self.precision = self.key.precision
        self.runner = te.TensorRTRunner(engine_path.read_bytes(), self.key.max_batch, device=device,
                                        cuda_graph=cuda_graph)
        self.max_batch = self.runner.max_batch

    @staticmethod
    def unavailable_reason() -> str | None:
        try:
            from perception.tensorrt_engine import import_tensorrt
            import_tensorrt()
        except ImportError:
            return "tensorrt not importable"
        import torch
        if not torch.cuda.is_available():
            return "no CUDA GPU"
        return None

    @classmethod
    def from_file(cls, path: Path, meta: ModelMeta, **options) -> "TensorRTBackend":
        return cls(path, **options)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.runner.infer(x)

    def accepts_frame(self, shape: tuple[int, ...], img_size: int) -> bool:
        """Raw frames go through :meth:`TensorRTRunner.infer_frame` (GPU preprocessing feeding the engine)."""
        from perception.gpu_preprocess import supports_shape
        return self.gpu_preprocess and supports_shape(tuple(shape[:2]), img_size)

    def infer_frame(self, frame: np.ndarray, color_order: str, meta: ModelMeta) -> np.ndarray:
        return self.runner.infer_frame(frame, color_order, meta)

    def warmup(self, n: int, img_size: int) -> None:
        from perception.backends import warmup_input
        x = warmup_input(img_size)
        for _ in range(n):
            self.infer(x)

    def describe(self) -> str:
        return (f"{self.key.gpu_name} (sm_{self.key.compute_capability.replace('.', '')}), TensorRT "
                f"{self.key.trt_version}, {self.key.precision}, cuda_graph={'on' if self.runner.use_graph else 'off'}")

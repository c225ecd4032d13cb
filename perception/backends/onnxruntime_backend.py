"""ONNX Runtime backend: the fastest path on a CPU, and on a GPU through its TensorRT / CUDA providers."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from perception.formats import default_cache_dir
from perception.meta import ModelMeta

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                       "CPUExecutionProvider")
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once).

    ONNX Runtime's intra-op pool is fastest with one thread per physical core: SMT siblings
    share the FMA units and only add synchronisation.
    """
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


def best_providers(available: list[str] | None = None) -> list[str]:
    """Available providers in preference order: TensorRT EP > CUDA EP > OpenVINO EP > CPU EP.

    The OpenVINO EP exists only in the ``onnxruntime-openvino`` build (an alternative to the
    default ``onnxruntime``; they share one import name). Measured on this project's 2-core x86
    CPU, EfficientNet-B0 at 224 px: OpenVINO EP 3.97 ms, plain onnxruntime 1.32 CPU EP ~4.3 ms,
    the OpenVINO build's own CPU EP 6.6 ms (docs/benchmarks.md).
    """
    if available is None:
        import onnxruntime as ort
        available = ort.get_available_providers()
    return [p for p in PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """One ``onnxruntime.InferenceSession`` tuned for batch-1 latency.

    Session options: full graph optimisation (conv+BN/activation fusion, NCHWc layout on x86),
    sequential execution (the graph is a chain; a parallel executor only adds overhead), and
    one intra-op thread per physical core.
    """
    name = "onnxruntime"

    def __init__(self, path: Path, meta: ModelMeta, providers: list[str] | None = None,
                 threads: int | None = None, cache_dir: Path | None = None) -> None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        names = list(providers) if providers else best_providers()
        unknown = [p for p in names if p not in ort.get_available_providers()]
        if unknown:
            raise ValueError(f"onnxruntime provider(s) {', '.join(unknown)} not available; "
                             f"valid here: {', '.join(ort.get_available_providers())}")
        trt_cache = str((cache_dir or default_cache_dir()) / "ort-tensorrt")
        options = {
            "TensorrtExecutionProvider": {"trt_engine_cache_enable": True, "trt_engine_cache_path": trt_cache,
                                          "trt_timing_cache_enable": True,
                                          "trt_fp16_enable": meta.precision == "fp16"},
            # FP32 explicitly: OpenVINO's CPU plugin otherwise picks bf16 on CPUs that have it,
            # which would silently change the logits the parity tests pin.
            "OpenVINOExecutionProvider": {"device_type": "CPU", "precision": "FP32",
                                          "num_of_threads": str(so.intra_op_num_threads)},
        }
        self.session = ort.InferenceSession(str(path), so, providers=[(p, options.get(p, {})) for p in names])
        self.threads = so.intra_op_num_threads
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.max_batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1 << 16

    @staticmethod
    def unavailable_reason() -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"onnxruntime not importable ({e})"
        return None

    @classmethod
    def from_file(cls, path: Path, meta: ModelMeta, **options) -> "OnnxRuntimeBackend":
        return cls(path, meta, **options)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def warmup(self, n: int, img_size: int) -> None:
        from perception.backends import warmup_input
        x = warmup_input(img_size)
        for _ in range(n):
            self.infer(x)

    def describe(self) -> str:
        import onnxruntime as ort
        return f"onnxruntime {ort.__version__}, {self.providers[0]}, {self.threads} intra-op threads"

"""ONNX Runtime backend: the fastest path on a CPU, and on a GPU through its TensorRT / CUDA providers."""
from __future__ import annotations

import json
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
PRECISION_CHOICES = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
THREADS_ENV = "CARLA_PERCEPTION_THREADS"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(requested: str, provider: str, model_precision: str,
                      flags: frozenset[str] | None = None) -> str:
    """The precision a session computes in when no measurement decides: ``fp32``, ``fp16`` or ``bf16``.

    ``auto`` here is the ONNX's own precision; on the CPU providers the backend replaces it with
    the measured choice of :mod:`perception.cpu_tune` (no flag rule: bf16 won on one CPU with
    ``avx512_bf16`` and lost on another). ``fp32``/``bf16`` force, and are checked here.

    Raises:
        ValueError: unknown value, or one this session cannot honour (says why and what can).
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"unknown onnxruntime precision {requested!r}; valid: {', '.join(PRECISION_CHOICES)}")
    if requested == "auto":
        return model_precision
    if requested == "bf16" and provider != "OpenVINOExecutionProvider":
        raise ValueError(f"precision 'bf16' needs ONNX Runtime's OpenVINOExecutionProvider (the onnxruntime-openvino "
                         f"package); this session runs {provider}: use precision 'auto' or 'fp32'")
    if requested == "bf16" and not BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags):
        raise ValueError("precision 'bf16' needs a CPU with native bf16 (avx512_bf16 or amx_bf16 in its flags) and this "
                         "one has neither: use precision 'auto' or 'fp32'")
    if requested == "fp32" and model_precision != "fp32":
        raise ValueError(f"precision 'fp32' asked of an {model_precision.upper()} ONNX: export without --fp16 for FP32, "
                         f"or use precision 'auto'")
    return requested


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

    The OpenVINO EP exists only in the ``onnxruntime-openvino`` build (what setup.py installs on
    x86-64 Linux; it shares the ``onnxruntime`` import name with the other builds). Measured on
    this project's 2-core x86 CPU, EfficientNet-B0 at 224 px: OpenVINO EP 3.96 ms in FP32 and
    2.74 ms in bf16, plain onnxruntime 1.32 CPU EP ~4.2 ms, the OpenVINO build's own CPU EP
    6.7 ms (docs/benchmarks.md).
    """
    if available is None:
        import onnxruntime as ort
        available = ort.get_available_providers()
    return [p for p in PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]


def env_threads() -> int | None:
    """``$CARLA_PERCEPTION_THREADS`` as a count, None when unset.

    Raises:
        ValueError: the variable is not a positive integer.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if not env:
        return None
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"{THREADS_ENV}={env!r}: want a positive integer (intra-op threads per session)")
    return int(env)


def default_threads() -> int:
    """Intra-op threads of a session nothing measured: ``$CARLA_PERCEPTION_THREADS`` if set, else the physical cores.

    With ``precision="auto"`` on the CPU the count is measured instead (one thread or one per
    physical core, :mod:`perception.cpu_tune`). Measured on the idle 2-core dev machine
    (docs/benchmarks.md), in one session: the closed loop (``launch.bench``, 224-px EfficientNet-B0,
    bf16) ran 41.1 FPS with two inference threads vs 35.2 with one (video on), 54.9 vs 44.6 (video off).

    Raises:
        ValueError: the variable is not a positive integer.
    """
    return env_threads() or max(1, physical_cores())


def session_options(threads: int):
    """ONNX Runtime options of every session in the drive (classifier, driving policies): all graph
    optimisations, sequential, ``threads`` intra-op threads, and workers that sleep when a call ends.

    Why not spin: a drive calls once per frame with the simulator in between, and spinning workers
    took its core. CPU EP x2, Lite0 96 px, 800x600 Town02 tick + predict, 2-core Xeon, alternating
    blocks: tick 5.84 vs 7.53 ms, predict 4.39 vs 5.71 ms, cycle 10.25 vs 13.24 ms (medians; again:
    11.2 vs 12.8 ms).
    """
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def session_for(path: Path, meta: ModelMeta, provider: str, precision: str, threads: int,
                cache_dir: Path | None = None) -> "OnnxRuntimeBackend":
    """A session on exactly ``provider`` computing in ``precision`` (already resolved), no tuning."""
    backend = OnnxRuntimeBackend.__new__(OnnxRuntimeBackend)
    backend._open(Path(path), meta, [provider], threads, precision, cache_dir)
    backend.decision = None
    return backend


class OnnxRuntimeBackend:
    """One ``onnxruntime.InferenceSession`` tuned for batch-1 latency.

    Session options: full graph optimisation (conv+BN/activation fusion, NCHWc layout on x86),
    sequential execution (the graph is a chain; a parallel executor only adds overhead), and
    :func:`default_threads` intra-op threads. With ``precision="auto"`` on the CPU providers the
    provider, precision and (unless ``threads`` or ``$CARLA_PERCEPTION_THREADS`` fix it) thread
    count come from :func:`perception.cpu_tune.tune` (measured once per CPU, build and model, then
    cached; :attr:`decision` holds why); ``fp32``/``bf16`` force.
    :attr:`precision` says what the session really computes in.
    """
    name = "onnxruntime"

    def __init__(self, path: Path, meta: ModelMeta, providers: list[str] | None = None,
                 threads: int | None = None, cache_dir: Path | None = None, precision: str = "auto") -> None:
        import onnxruntime as ort
        names = list(providers) if providers else best_providers()
        unknown = [p for p in names if p not in ort.get_available_providers()]
        if unknown:
            raise ValueError(f"onnxruntime provider(s) {', '.join(unknown)} not available; "
                             f"valid here: {', '.join(ort.get_available_providers())}")
        fixed = threads or env_threads()
        threads = fixed or default_threads()
        wanted = resolve_precision(precision, names[0], meta.precision)
        self.decision = None
        if precision == "auto" and names[0] not in GPU_PROVIDERS:
            from perception import cpu_tune
            candidates = cpu_tune.cpu_candidates(names, meta.precision, bool(BF16_CPU_FLAGS & cpu_flags()),
                                                 () if fixed else cpu_tune.thread_options())
            if len(candidates) > 1:
                self.decision = cpu_tune.tune(path, meta, candidates=candidates, threads=threads,
                                              cache_dir=cache_dir, keep_sessions=True)
                chosen = self.decision.chosen
                live = self.decision.sessions.pop(chosen, None)
                self.decision.sessions.clear()        # the losers' sessions go now
                if live is not None:                  # measured just now: reuse the winner's session
                    self.__dict__.update({k: v for k, v in live.__dict__.items() if k != "decision"})
                    return
                names, wanted, threads = [chosen.provider], chosen.precision, chosen.threads or threads
        self._open(Path(path), meta, names, threads, wanted, cache_dir, forced=precision)

    def _open(self, path: Path, meta: ModelMeta, names: list[str], threads: int, wanted: str,
              cache_dir: Path | None, forced: str = "auto") -> None:
        import onnxruntime as ort
        so = session_options(threads)
        trt_cache = str((cache_dir or default_cache_dir()) / "ort-tensorrt")
        options = {
            "TensorrtExecutionProvider": {"trt_engine_cache_enable": True, "trt_engine_cache_path": trt_cache,
                                          "trt_timing_cache_enable": True,
                                          "trt_fp16_enable": meta.precision == "fp16"},
            # The precision always set explicitly: OpenVINO's CPU plugin picks bf16 by itself on
            # AMX CPUs, which would change the logits behind the caller's back. The hint goes
            # through load_config: the EP's own ``precision`` option refuses BF16 on the CPU.
            "OpenVINOExecutionProvider": {
                "device_type": "CPU", "num_of_threads": str(threads),
                "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16" if wanted == "bf16" else "f32"}})},
        }
        self.session = ort.InferenceSession(str(path), so, providers=[(p, options.get(p, {})) for p in names])
        running = self.session.get_providers()[0]
        if running != names[0]:      # e.g. onnxruntime-gpu without its CUDA libraries falls back silently
            if wanted == "bf16":
                raise RuntimeError(f"precision 'bf16' needs {names[0]}, which onnxruntime did not start for {path} "
                                   f"(session runs {running}): use precision 'auto' or 'fp32'")
            log.warning("onnxruntime did not start %s for %s; running on %s", names[0], path, running)
            wanted = resolve_precision(forced, running, meta.precision)
        self.precision = wanted
        self.threads = threads
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
        how = ""
        if self.decision is not None:
            how = f" (auto: {'cached' if self.decision.cached else 'measured'} decision)"
        return (f"onnxruntime {ort.__version__}, {self.providers[0]}, {self.precision}{how}, "
                f"{self.threads} intra-op threads")

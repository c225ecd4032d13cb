"""The one classifier API: load a ``.pt``, ``.onnx`` or ``.engine`` and classify raw CARLA frames.

Example::

    from perception.classifier import CurveClassifier
    clf = CurveClassifier.load("model.onnx")              # backend="auto", 3 warm-up calls
    pred = clf.predict(np.frombuffer(image.raw_data, np.uint8).reshape(image.height, image.width, 4))
    pred.label, pred.p_curve, pred.timings_ms             # 'curve', 0.93, {'preprocess': .., 'infer': .., 'total': ..}

``backend="auto"`` picks, in order: TensorRT (importable and a CUDA GPU), ONNX Runtime when it
has a GPU provider, torch-cuda (GPU without TensorRT), ONNX Runtime on the CPU, torch. A file in
another format than the backend reads is converted once and cached: ``.pt`` -> ``.onnx`` (export
into the cache dir) -> ``.engine`` (sibling of the ONNX); an ``.onnx`` finds its checkpoint through
its metadata; an ``.engine`` finds its ONNX through its sidecar.

``clf.contract`` / ``clf.camera`` / ``clf.label_params`` give the camera and label definition the
model was trained under (None for models that predate the contract).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.preprocess import check_frame, crop_band, normalize, to_rgb_resized
from datasets.schema import CameraSpec, Contract, LabelParams
from perception.backends import Backend, available_backends, load_backend, unavailable_reason
from perception.formats import backend_info, default_cache_dir, format_for_path
from perception.meta import ModelMeta, load_checkpoint, read_model_meta, read_onnx_meta, sha256_file

log = logging.getLogger(__name__)

_CHAIN = ("torch", "onnx", "engine")     # derivation order of the formats


@dataclass(frozen=True)
class Prediction:
    """One frame's result.

    Attributes:
        label: predicted class name.
        p_curve: probability of ``curve``, ``softmax(logits / meta.temperature)`` (calibrated).
        probs: calibrated probabilities in ``classes`` order.
        timings_ms: ``preprocess``, ``infer``, ``total`` in ms (a batch's share per frame in predict_batch).
    """
    label: str
    p_curve: float
    probs: tuple[float, ...]
    timings_ms: dict[str, float]


def read_meta(path: Path) -> ModelMeta:
    """ModelMeta of any artifact (checkpoint config, ONNX metadata_props, engine sidecar); see
    :func:`perception.meta.read_model_meta` (no network or session is built)."""
    return read_model_meta(path)


def resolve_backend(name: str, path: Path) -> str:
    """``auto`` -> the best backend for ``path`` on this machine; a named one -> checked as usable here.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: the named backend cannot run here (names the ones that can).
    """
    if name != "auto":
        backend_info(name)   # unknown name -> ValueError listing valid ones
        reason = unavailable_reason(name)
        if reason:
            raise RuntimeError(f"backend {name!r} is unavailable: {reason}; available here: "
                               f"{', '.join(available_backends())}")
        return name
    usable = available_backends()
    if format_for_path(path).arg == "engine":
        if "tensorrt" not in usable:
            raise RuntimeError(f"{path} is a TensorRT engine but backend 'tensorrt' is unavailable: "
                               f"{unavailable_reason('tensorrt')}; load the .onnx instead (backends here: "
                               f"{', '.join(usable)})")
        return "tensorrt"
    if "tensorrt" in usable:
        return "tensorrt"
    if "onnxruntime" in usable:
        from perception.backends.onnxruntime_backend import GPU_PROVIDERS, best_providers
        if best_providers()[0] in GPU_PROVIDERS:
            return "onnxruntime"
    if "torch-cuda" in usable:
        return "torch-cuda"
    return "onnxruntime" if "onnxruntime" in usable else "torch"


def _derive_onnx(checkpoint: Path, cache_dir: Path) -> Path:
    """Export a checkpoint once into the cache (keyed by its sha256) and return the ONNX path."""
    from perception.export import export_onnx
    out = cache_dir / "onnx" / f"{checkpoint.stem}-{sha256_file(checkpoint)[:16]}.onnx"
    if not out.is_file():
        log.info("exporting %s to %s for ONNX-based backends (once; cached)", checkpoint, out)
        model, meta = load_checkpoint(checkpoint)
        export_onnx(model, meta, out)
    return out


def _source_checkpoint(onnx_path: Path) -> Path:
    meta = read_onnx_meta(onnx_path)
    ckpt = Path(meta.checkpoint_path) if meta.checkpoint_path else None
    if ckpt is None or not ckpt.is_file():
        raise FileNotFoundError(f"torch backends need the training checkpoint; {onnx_path} names "
                                f"{meta.checkpoint_path or 'none'} which is not here: load the .pt instead")
    if meta.checkpoint_sha256 and sha256_file(ckpt) != meta.checkpoint_sha256:
        raise ValueError(f"{ckpt} changed since {onnx_path} was exported (sha256 differs): load the .pt directly "
                         f"or re-export")
    return ckpt


def _source_onnx(engine_path: Path) -> Path:
    from perception.tensorrt_engine import read_sidecar
    side = read_sidecar(engine_path) or {}
    onnx_path = Path(side.get("onnx") or engine_path.with_suffix(".onnx"))
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{engine_path} is a TensorRT engine and its source ONNX {onnx_path} is gone; "
                                f"use backend 'tensorrt' or load the .onnx")
    return onnx_path


def artifact_for(path: Path, backend: str, cache_dir: Path | None = None) -> Path:
    """The file ``backend`` reads, derived from ``path`` (export/build) or traced back to its source."""
    path = Path(path)
    need = backend_info(backend).reads
    cache_dir = cache_dir or default_cache_dir()
    while (have := format_for_path(path).arg) != need:
        if _CHAIN.index(need) > _CHAIN.index(have):
            if have == "torch":
                path = _derive_onnx(path, cache_dir)
            else:
                from perception.tensorrt_engine import ensure_engine
                path = ensure_engine(path)
        else:
            path = _source_checkpoint(path) if have == "onnx" else _source_onnx(path)
    return path


def _pin_to_last_cpu() -> None:
    """Keep the resize helper thread on one CPU (the last this process may use).

    Unpinned, Linux often woke it on the caller's CPU while the inference runtime's worker was
    still spinning on the other one, and the two halves then ran one after the other: on the
    2-core dev machine 2 of 5 bench runs preprocessed in 1.59 ms instead of 0.90 ms; pinned,
    6 of 6 ran at 0.90 ms. If that CPU is busy, resize_area does the helper's half itself.
    """
    try:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})   # 0 = this thread
    except (AttributeError, OSError):
        pass


class CurveClassifier:
    """Curve/straight classifier over one backend, with the training preprocessing built in.

    Construct with :meth:`load`; ``predict`` takes a raw frame (H x W x 4 BGRA uint8 as CARLA
    delivers, or H x W x 3 with ``color_order`` stated). On a machine with two or more cores the
    classifier keeps one spare thread that resizes half of each frame (bit-identical to the
    single-threaded resize training uses; see :func:`datasets.preprocess.resize_area`): 0.90 ms
    instead of 1.29 ms for an 800x600 frame on the 2-core dev machine.
    """

    def __init__(self, backend: Backend, meta: ModelMeta, source: Path | None = None,
                 preprocess_threads: int | None = None) -> None:
        from perception.backends.onnxruntime_backend import physical_cores
        self.backend = backend
        self.meta = meta
        self.source = source
        if preprocess_threads is None:
            # Not beside torch on the CPU: its OpenMP workers spin on the second core between
            # calls, and the split resize then took 1.50 ms instead of 1.29 ms single-threaded.
            preprocess_threads = 1 if backend.name == "torch" else physical_cores()
        threads = preprocess_threads
        if threads < 1:
            raise ValueError(f"preprocess_threads must be >= 1, got {threads}")
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="preprocess", initializer=_pin_to_last_cpu)
                      if threads > 1 else None)

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", warmup: int = 3, cache_dir: str | Path | None = None,
             preprocess_threads: int | None = None, **backend_options) -> "CurveClassifier":
        """Load ``path`` (.pt/.onnx/.engine) on ``backend`` and run ``warmup`` throw-away inferences.

        Args:
            path: checkpoint, ONNX or engine.
            backend: ``auto`` or one of ``tensorrt``, ``onnxruntime``, ``torch-cuda``, ``torch``.
            warmup: inferences run before returning, so the first real frame is not the slow one.
            cache_dir: where on-the-fly ONNX exports go (default ``$CARLA_PERCEPTION_CACHE``).
            preprocess_threads: threads resizing a frame (default: physical cores, but 1 for the
                CPU torch backend; 1 or 2 are used).
            backend_options: passed to the backend class (e.g. ``providers=``, ``threads=``,
                ``precision=`` for onnxruntime; ``fp16=``, ``cuda_graph=`` for torch-cuda;
                ``cuda_graph=`` for tensorrt).

        Raises:
            ValueError: unknown file type / backend, or an ONNX without our metadata.
            RuntimeError: the backend cannot run here (names the available ones), or a stale engine
                that cannot be rebuilt.
        """
        path = Path(path)
        format_for_path(path)               # unknown suffix -> ValueError first
        if not path.is_file():
            raise FileNotFoundError(f"model file {str(path)!r} not found")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        name = resolve_backend(backend, path)
        meta = read_meta(path)
        artifact = artifact_for(path, name, Path(cache_dir) if cache_dir else None)
        if artifact != path:
            meta = read_meta(artifact)
        t0 = time.perf_counter()
        impl = load_backend(name, artifact, meta, **backend_options)
        t1 = time.perf_counter()
        impl.warmup(warmup, meta.img_size)
        log.info("loaded %s on %s [%s] in %.0f ms, %d warm-up calls in %.0f ms", artifact, name, impl.describe(),
                 1e3 * (t1 - t0), warmup, 1e3 * (time.perf_counter() - t1))
        clf = cls(impl, meta, artifact, preprocess_threads)
        if warmup:
            blank = np.zeros((600, 800, 4), np.uint8)
            clf.preprocess(blank)                                # starts the resize thread now
            if clf.takes_frame(blank):                           # sets up / captures the frame path for CARLA's default camera
                clf.backend.infer_frame(blank, "BGRA", clf.meta)
        return clf

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    @property
    def contract(self) -> Contract | None:
        """Camera + label definition the model was trained under (None for models that record none)."""
        return self.meta.contract

    @property
    def camera(self) -> CameraSpec | None:
        """The camera to drive this model with: resolution, fov, mount (None when not recorded)."""
        return self.meta.camera

    @property
    def label_params(self) -> LabelParams | None:
        """The label definition (lookahead, thresholds, junction policy) ground truth must use, or None."""
        return self.meta.label_params

    def preprocess(self, frame: np.ndarray, color_order: str = "BGRA") -> np.ndarray:
        """Raw frame -> float32 1x3xSxS, exactly as training saw it (datasets.preprocess), the model's
        band of rows (``meta.crop_rows``) included."""
        rgb = to_rgb_resized(frame, self.meta.img_size, color_order, self._pool, self.meta.crop_rows)
        return normalize(rgb, self.meta.mean, self.meta.std)[None]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed N x 3 x S x S -> N x C logits, split into chunks the backend accepts."""
        step = self.backend.max_batch
        if len(x) <= step:
            return self.backend.infer(x)
        return np.concatenate([self.backend.infer(x[i:i + step]) for i in range(0, len(x), step)])

    def _predictions(self, logits: np.ndarray, timings: dict[str, float]) -> list[Prediction]:
        z = logits.astype(np.float64) / self.meta.temperature  # calibrated probabilities; logits stay raw
        z -= z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        ci = self.meta.curve_index
        return [Prediction(label=self.meta.classes[int(p.argmax())], p_curve=float(p[ci]),
                           probs=tuple(float(v) for v in p), timings_ms=dict(timings)) for p in probs]

    def takes_frame(self, frame: np.ndarray) -> bool:
        """True when the backend preprocesses raw frames itself (GPU backends, see ``infer_frame``)."""
        accepts = getattr(self.backend, "accepts_frame", None)
        return accepts is not None and accepts(crop_band(frame, self.meta.crop_rows).shape, self.meta.img_size)

    def predict(self, frame: np.ndarray, color_order: str = "BGRA") -> Prediction:
        """Classify one raw frame. Raises ValueError for a wrong shape/dtype/colour order.

        A backend with its own frame path (torch-cuda, tensorrt) gets the raw frame: ``preprocess``
        is then the host-side staging copy and ``infer`` the device upload + preprocessing +
        network + logits download (one CUDA graph replay on torch-cuda).
        """
        check_frame(frame, color_order)
        if self.takes_frame(frame):
            t0 = time.perf_counter()
            frame = np.ascontiguousarray(frame)
            t1 = time.perf_counter()
            logits = self.backend.infer_frame(frame, color_order, self.meta)
            t2 = time.perf_counter()
            return self._predictions(logits, {"preprocess": 1e3 * (t1 - t0), "infer": 1e3 * (t2 - t1),
                                              "total": 1e3 * (t2 - t0)})[0]
        t0 = time.perf_counter()
        x = self.preprocess(frame, color_order)
        t1 = time.perf_counter()
        logits = self.backend.infer(x)
        t2 = time.perf_counter()
        return self._predictions(logits, {"preprocess": 1e3 * (t1 - t0), "infer": 1e3 * (t2 - t1),
                                          "total": 1e3 * (t2 - t0)})[0]

    def predict_batch(self, frames, color_order: str = "BGRA") -> list[Prediction]:
        """Classify many frames in as few backend calls as the backend allows; timings are per-frame shares."""
        frames = list(frames)
        if not frames:
            return []
        t0 = time.perf_counter()
        x = np.concatenate([self.preprocess(f, color_order) for f in frames])
        t1 = time.perf_counter()
        logits = self.logits(x)
        t2 = time.perf_counter()
        n = len(frames)
        return self._predictions(logits, {"preprocess": 1e3 * (t1 - t0) / n, "infer": 1e3 * (t2 - t1) / n,
                                          "total": 1e3 * (t2 - t0) / n})

    def __repr__(self) -> str:
        return (f"CurveClassifier({self.source}, backend={self.backend_name!r}, arch={self.meta.arch!r}, "
                f"img_size={self.meta.img_size}, precision={self.meta.precision!r})")


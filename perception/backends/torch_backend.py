"""PyTorch backends: ``torch`` (CPU eager, the reference) and ``torch-cuda`` (FP16, channels_last, CUDA graph)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.preprocess import crop_band
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
    (tensor-core friendly convolutions), and for batch 1 a captured CUDA graph. With
    ``gpu_preprocess`` (default) :meth:`infer_frame` takes the raw camera frame: it is copied into
    a pinned host buffer, and ONE graph replay uploads it (async H2D), converts, area-resizes and
    normalises it (:class:`perception.gpu_preprocess.FramePreprocessor`), runs the network and
    copies the logits back into pinned memory; only the logits cross the bus back. If the driver or
    torch refuses to capture a copy, the copies run on the same stream around the replay instead
    (``describe()`` says which), and a capture whose replay disagrees with eager is discarded.
    ``device="cpu"`` runs the same code without pinning or graphs (how the tests check it here).
    """
    name = "torch-cuda"

    def __init__(self, model: nn.Module, fp16: bool = True, channels_last: bool = True,
                 cuda_graph: bool = True, device: str = "cuda", gpu_preprocess: bool = True) -> None:
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if fp16 else torch.float32
        self.precision = "fp16" if fp16 else "fp32"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, self.dtype).to(memory_format=self.memory_format)
        self.use_graph = cuda_graph and self.is_cuda
        self.gpu_preprocess = gpu_preprocess
        self.max_batch = 1 << 16
        self._graph = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None
        self._stream = torch.cuda.Stream(self.device) if self.is_cuda else None
        self._frame: dict | None = None       # state of the frame path (see _setup_frame)
        self.frame_graph_mode = "none"        # 'full' (copies in the graph), 'kernels', 'eager'

    @staticmethod
    def unavailable_reason() -> str | None:
        return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"

    @classmethod
    def from_file(cls, path: Path, meta: ModelMeta, **options) -> "TorchCudaBackend":
        if torch.device(options.get("device", "cuda")).type == "cuda":
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

    # --- raw frame in, logits out ------------------------------------------------------------

    def accepts_frame(self, shape: tuple[int, ...], img_size: int) -> bool:
        """True when :meth:`infer_frame` can take a frame of ``shape`` (GPU preprocessing on and supported)."""
        from perception.gpu_preprocess import supports_shape
        return self.gpu_preprocess and supports_shape(tuple(shape[:2]), img_size)

    def _frame_ops(self, st: dict, copies: bool) -> None:
        """Upload (optional), preprocess, model, logits to host (optional): the body that is captured."""
        if copies:
            st["dev_frame"].copy_(st["host_frame"], non_blocking=True)
        st["dev_out"] = self.model(st["pre"](st["dev_frame"]))
        if copies:
            st["host_out"].copy_(st["dev_out"], non_blocking=True)

    def _setup_frame(self, shape: tuple[int, ...], color_order: str, meta: ModelMeta) -> None:
        from perception.gpu_preprocess import FramePreprocessor
        pre = FramePreprocessor(shape[:2], meta.img_size, color_order, meta.mean, meta.std, out_dtype=self.dtype,
                                channels_last=self.memory_format == torch.channels_last).to(self.device)
        pin = self.is_cuda
        st = {"key": (tuple(shape), color_order, meta.img_size), "pre": pre,
              "host_frame": torch.empty(tuple(shape), dtype=torch.uint8, pin_memory=pin),
              "dev_frame": torch.empty(tuple(shape), dtype=torch.uint8, device=self.device),
              "host_out": torch.empty((1, meta.num_classes), dtype=self.dtype, pin_memory=pin),
              "graph": None}
        st["host_frame_np"] = st["host_frame"].numpy()
        self._frame = st
        self.frame_graph_mode = "eager"
        if not self.use_graph:
            return
        rng = np.random.default_rng(0)
        st["host_frame_np"][...] = rng.integers(0, 256, st["host_frame_np"].shape, dtype=np.uint8)
        with torch.inference_mode():
            with torch.cuda.stream(self._stream):
                for _ in range(3):                               # warm-up on the side stream, as torch requires
                    self._frame_ops(st, copies=True)
            self._stream.synchronize()
            want = st["host_out"].float().clone()
            for copies in (True, False):
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self._stream):
                        self._frame_ops(st, copies)
                    st["host_out"].zero_()
                    self._replay(st, graph, copies)
                    got = st["host_out"].float()
                    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                        raise RuntimeError(f"replay gave {got.tolist()}, eager {want.tolist()}")
                except Exception as e:  # noqa: BLE001  (any capture failure: fall back one level)
                    log.warning("torch-cuda: CUDA graph %s copies failed (%s); falling back",
                                "with" if copies else "without", str(e).splitlines()[0] if str(e) else type(e).__name__)
                    torch.cuda.synchronize(self.device)
                    continue
                st["graph"], st["graph_copies"] = graph, copies
                self.frame_graph_mode = "full" if copies else "kernels"
                log.debug("captured the frame graph (%s) for %s %s", self.frame_graph_mode, shape, color_order)
                return

    def _replay(self, st: dict, graph, copies: bool) -> None:
        with torch.cuda.stream(self._stream):
            if not copies:
                st["dev_frame"].copy_(st["host_frame"], non_blocking=True)
            graph.replay()
            if not copies:
                st["host_out"].copy_(st["dev_out"], non_blocking=True)
        self._stream.synchronize()

    def infer_frame(self, frame: np.ndarray, color_order: str, meta: ModelMeta) -> np.ndarray:
        """Raw uint8 HxWxC frame -> float32 1 x num_classes logits, preprocessing on the device (only the
        model's band of rows, ``meta.crop_rows``, is staged and uploaded)."""
        frame = crop_band(frame, meta.crop_rows)
        key = (tuple(frame.shape), color_order, meta.img_size)
        if self._frame is None or self._frame["key"] != key:
            self._setup_frame(frame.shape, color_order, meta)
        st = self._frame
        np.copyto(st["host_frame_np"], frame)
        if st["graph"] is not None:
            self._replay(st, st["graph"], st["graph_copies"])
        elif self.is_cuda:
            with torch.inference_mode(), torch.cuda.stream(self._stream):
                self._frame_ops(st, copies=True)
            self._stream.synchronize()
        else:
            with torch.inference_mode():
                self._frame_ops(st, copies=True)
        return st["host_out"].float().numpy().copy()

    def frame_breakdown(self, frame: np.ndarray, color_order: str, meta: ModelMeta) -> dict[str, float]:
        """One EAGER run of the frame path timed per stage (ms): stage, upload, preprocess, infer, download.

        CUDA events on the stream on a GPU, wall clock on the CPU. The captured graph cannot be
        split, so this is the eager breakdown that shows where the graph's time would go.
        """
        import time
        self.infer_frame(frame, color_order, meta)            # set up buffers for this shape
        frame = crop_band(frame, meta.crop_rows)
        st = self._frame
        marks: list = []

        def mark():
            if self.is_cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record(self._stream)
                marks.append(ev)
            else:
                marks.append(time.perf_counter())
        t0 = time.perf_counter()
        np.copyto(st["host_frame_np"], frame)
        stage_ms = 1e3 * (time.perf_counter() - t0)
        with torch.inference_mode(), (torch.cuda.stream(self._stream) if self.is_cuda else _nullctx()):
            mark()
            st["dev_frame"].copy_(st["host_frame"], non_blocking=True)
            mark()
            x = st["pre"](st["dev_frame"])
            mark()
            y = self.model(x)
            mark()
            st["host_out"].copy_(y, non_blocking=True)
            mark()
        if self.is_cuda:
            self._stream.synchronize()
            d = [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
        else:
            d = [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
        return {"stage": stage_ms, "upload": d[0], "preprocess": d[1], "infer": d[2], "download": d[3]}

    def warmup(self, n: int, img_size: int) -> None:
        _warm(self, n, img_size)

    def describe(self) -> str:
        if not self.is_cuda:
            head = f"CPU (frame-path check), torch {torch.__version__}"
        else:
            props = torch.cuda.get_device_properties(self.device)
            head = f"{props.name} (sm_{props.major}{props.minor}), torch {torch.__version__}"
        return (f"{head}, {'fp16' if self.dtype == torch.float16 else 'fp32'}, "
                f"{'channels_last' if self.memory_format == torch.channels_last else 'NCHW'}, "
                f"cuda_graph={'on' if self.use_graph else 'off'}, "
                f"preprocess={'gpu (frame graph: ' + self.frame_graph_mode + ')' if self.gpu_preprocess else 'cpu'}")


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""Export a training checkpoint to a self-describing ONNX file (and optionally a TensorRT engine).

Usage::

    python -m perception.export --checkpoint runs/train/exp/weights/best.pt --out model.onnx
    python -m perception.export --checkpoint best.pt --out model_fp16.onnx --fp16 --dynamic-batch \\
        --engine model_fp16.engine --workspace 2G --frames data/town02

The ONNX carries class names, input size, mean/std, colour order, the checkpoint's sha256 and the
camera/label contract the model was trained under (keys ``camera`` and ``label``, JSON; absent for
checkpoints that record none) in its ``metadata_props``, so the classifier needs no other file. Export runs ``onnx.checker`` and
prints ONNX Runtime vs torch parity on recorded frames (``--frames``; drawn frames otherwise).

FP16 (``--fp16``): weights and compute are float16, the model's input and output stay float32
(casts are inside the graph), so callers never change. TensorRT 11 builds it strongly typed (FP16
from the graph); TensorRT 10 also sets its FP16 builder flag.
"""
from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.io_safety import check_output_path, cli_errors
from datasets.preprocess import FULL_FRAME

from perception.formats import check_options, format_by_arg, format_for_path
from perception.meta import ModelMeta, load_checkpoint

log = logging.getLogger(__name__)

EXPORTER_VERSION = "1"
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str | int) -> int:
    """``"2G"``, ``"512M"``, ``"1073741824"`` -> bytes. Raises ValueError naming the accepted forms."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r}; use bytes or a number with K, M or G (e.g. 512M, 2G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


@dataclass
class ExportConfig:
    """What to export and how (the CLI flags, validated).

    Attributes:
        checkpoint: training checkpoint ``.pt``.
        out: ONNX file to write.
        fp16: float16 weights/compute, float32 IO.
        dynamic_batch: dynamic batch axis (else batch 1, the real-time case).
        engine: also build a TensorRT engine here (needs tensorrt + an NVIDIA GPU).
        workspace: TensorRT builder workspace, bytes.
        max_batch: top of the TensorRT optimisation profile when ``dynamic_batch``.
        opset: ONNX opset.
        exporter: ``torchscript`` (torch.onnx legacy, fast) or ``dynamo`` (torch.export based).
        frames: recorded frames for the parity figure (dataset dir or image dir); None = drawn frames.
        parity_frames: how many frames the parity check uses (0 = skip it).
        seed: seed of the drawn frames.
    """
    checkpoint: Path
    out: Path
    fp16: bool = False
    dynamic_batch: bool = False
    engine: Path | None = None
    workspace: int = 1 << 30
    max_batch: int = 8
    opset: int = 17
    exporter: str = "torchscript"
    frames: Path | None = None
    parity_frames: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        import onnx.defs
        self.checkpoint, self.out = Path(self.checkpoint), Path(self.out)
        if format_for_path(self.checkpoint).arg != "torch":
            raise ValueError(f"--checkpoint must be a .pt training checkpoint, got {str(self.checkpoint)!r}")
        if not self.checkpoint.is_file():
            raise ValueError(f"--checkpoint {str(self.checkpoint)!r}: no such file")
        onnx_fmt = format_by_arg("onnx")
        if self.out.suffix.lower() != onnx_fmt.suffix:
            raise ValueError(f"--out must end in {onnx_fmt.suffix}, got {str(self.out)!r}")
        check_options(onnx_fmt, fp16=self.fp16, dynamic_batch=self.dynamic_batch)
        if self.engine is not None:
            self.engine = Path(self.engine)
            engine_fmt = format_by_arg("engine")
            if self.engine.suffix.lower() != engine_fmt.suffix:
                raise ValueError(f"--engine must end in {engine_fmt.suffix}, got {str(self.engine)!r}")
        self.workspace = parse_size(self.workspace)
        if self.frames is not None:
            self.frames = Path(self.frames)
        if self.exporter not in EXPORTERS:
            raise ValueError(f"unknown exporter {self.exporter!r}; valid: {', '.join(EXPORTERS)}")
        if not 11 <= self.opset <= onnx.defs.onnx_opset_version():
            raise ValueError(f"--opset {self.opset} unsupported; valid: 11..{onnx.defs.onnx_opset_version()}")
        if self.max_batch < 1 or self.parity_frames < 0:
            raise ValueError(f"need --max-batch >= 1 and --parity-frames >= 0, got {self.max_batch}, "
                             f"{self.parity_frames}")


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime vs torch (FP32 checkpoint) on the same preprocessed frames."""
    frames: int
    source: str
    max_abs_dlogit: float
    class_agreement: float       # fraction of frames with the same argmax
    logit_std: float             # spread of torch logits across frames: ~0 means parity proves nothing
    runtime: str = "CPUExecutionProvider, fp32"     # ONNX Runtime provider and precision compared

    def __str__(self) -> str:
        return (f"ONNX Runtime ({self.runtime}) vs torch on {self.frames} {self.source}: max |dlogit| = "
                f"{self.max_abs_dlogit:.2e}, class agreement {100 * self.class_agreement:.2f}% (torch logit std "
                f"across frames {self.logit_std:.3f})")


@dataclass
class ExportResult:
    onnx: Path
    meta: ModelMeta
    parity: ParityReport | None = None
    parity_default: ParityReport | None = None     # the session CurveClassifier builds here, if it differs
    cpu_decision: object | None = None             # perception.cpu_tune.Decision: what precision="auto" runs
    engine: Path | None = None
    seconds: dict = field(default_factory=dict)


class _Float16Compute:
    """Wraps a model so weights/compute are float16 while the graph's IO stays float32."""

    @staticmethod
    def wrap(model):
        import torch
        from torch import nn

        class HalfIO(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x.half()).float()

        return HalfIO(copy.deepcopy(model).half()).eval()


def _torch_to_onnx(module, img_size: int, path: Path, opset: int, dynamic_batch: bool, exporter: str) -> str:
    """Write ``module`` to ``path``; returns which torch exporter produced it."""
    import torch
    x = torch.zeros(1, 3, img_size, img_size)
    if exporter == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice
                torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                                  if dynamic_batch else None)
            return "torchscript"
        except (TypeError, NotImplementedError, AttributeError) as e:   # legacy exporter removed from torch
            log.warning("torch.onnx legacy exporter unavailable (%s); using the dynamo exporter", e)
    dynamic_shapes = ({"x": {0: torch.export.Dim("batch", min=1, max=1024)}},) if dynamic_batch else None
    program = torch.onnx.export(module, (x,), dynamo=True, opset_version=max(opset, 18), verbose=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes)
    program.save(str(path))
    return "dynamo"


def export_onnx(model, meta: ModelMeta, out: Path, fp16: bool = False, dynamic_batch: bool = False,
                opset: int = 17, exporter: str = "torchscript") -> ModelMeta:
    """Write ``model`` (eval, CPU, FP32) to ``out`` with our metadata; run onnx.checker. Returns the written meta."""
    import onnx
    import torch
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = _Float16Compute.wrap(model) if fp16 else model.eval()
    used = _torch_to_onnx(module, meta.img_size, out, opset, dynamic_batch, exporter)
    written = meta.replace(precision="fp16" if fp16 else "fp32", dynamic_batch=dynamic_batch,
                           exporter=f"perception.export {EXPORTER_VERSION} ({used}; torch {torch.__version__}, "
                                    f"onnx {onnx.__version__}, opset {opset})")
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in written.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"carla-perception {written.arch} curve/straight classifier; input {INPUT_NAME} " \
                       f"float32 Nx3x{written.img_size}x{written.img_size} RGB normalised, output {OUTPUT_NAME}"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return written


def parity_check(model, onnx_path: Path, meta: ModelMeta, frames: list[np.ndarray], color_order: str,
                 source: str, sessions: tuple[tuple[list[str] | None, str], ...] = ((["CPUExecutionProvider"], "auto"),)
                 ) -> list[ParityReport]:
    """Compare ONNX Runtime sessions with the FP32 torch model on ``frames``, one report per session.

    ``sessions`` holds (providers, precision) pairs: the CPU provider is the exact FP32 reference,
    ``providers=None`` the session the classifier would build. Frames are preprocessed and run
    through torch once for all of them.
    """
    import torch
    from datasets.preprocess import preprocess
    from perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    x = np.concatenate([preprocess(f, meta.img_size, color_order, meta.mean, meta.std, meta.crop_rows) for f in frames])
    with torch.inference_mode():
        ref = model.eval().float()(torch.from_numpy(x)).numpy()
    reports = []
    for providers, precision in sessions:
        ort = OnnxRuntimeBackend(onnx_path, meta, providers=providers, precision=precision)
        got = np.concatenate([ort.infer(x[i:i + ort.max_batch]) for i in range(0, len(x), ort.max_batch)])
        reports.append(ParityReport(frames=len(frames), source=source, max_abs_dlogit=float(np.abs(got - ref).max()),
                                    class_agreement=float((got.argmax(1) == ref.argmax(1)).mean()),
                                    logit_std=float((ref[:, 0] - ref[:, 1]).std()),
                                    runtime=f"{ort.providers[0]}, {ort.precision}"))
    return reports


def _parity_frames(cfg: ExportConfig) -> tuple[list[np.ndarray], str, str]:
    from perception.frames import load_frames, road_frames
    if cfg.frames is not None:
        frames, order = load_frames(cfg.frames, cfg.parity_frames)
        return frames, order, f"recorded frames from {cfg.frames}"
    frames, _ = road_frames(cfg.parity_frames, cfg.seed)
    return frames, "BGRA", "DRAWN road frames (no --frames given: pass a dataset dir for real-frame parity)"


def _tune_cpu(onnx_path: Path, meta: ModelMeta, frames: list[np.ndarray], order: str):
    """Measure and cache the CPU decision of ``precision="auto"`` now (full budget), so no user's load does.

    Returns the Decision, or None where ONNX Runtime's default provider is a GPU one or there is
    only one CPU candidate (nothing to choose).
    """
    from perception import cpu_tune
    from perception.backends.onnxruntime_backend import GPU_PROVIDERS, best_providers
    providers = best_providers()
    candidates = cpu_tune.default_candidates(providers, meta.precision)   # what a default load looks up
    if providers[0] in GPU_PROVIDERS or len(candidates) < 2:
        return None
    budget = cpu_tune.Budget(max(len(frames), cpu_tune.FULL.frames), cpu_tune.FULL.seconds)
    if len(frames) < budget.frames:         # recorded frames first, drawn ones to make up the count
        import cv2

        from perception.frames import road_frames
        drawn = road_frames(budget.frames - len(frames), seed=1, width=400, height=300)[0]
        frames = [f if order == "BGRA" else cv2.cvtColor(f, cv2.COLOR_BGR2BGRA) for f in frames] + drawn
        order = "BGRA"
    return cpu_tune.tune(onnx_path, meta, candidates=candidates, budget=budget, force=True, frames=(frames, order))


def export(cfg: ExportConfig) -> ExportResult:
    """Checkpoint -> ONNX (+ parity on frames) [-> TensorRT engine]. The CLI's one library call."""
    t0 = time.perf_counter()
    model, meta = load_checkpoint(cfg.checkpoint)
    written = export_onnx(model, meta, cfg.out, cfg.fp16, cfg.dynamic_batch, cfg.opset, cfg.exporter)
    result = ExportResult(onnx=cfg.out, meta=written, seconds={"export": time.perf_counter() - t0})
    if cfg.parity_frames:
        t1 = time.perf_counter()
        frames, order, source = _parity_frames(cfg)
        result.cpu_decision = _tune_cpu(cfg.out, written, frames, order)
        result.parity, default = parity_check(model, cfg.out, written, frames, order, source,
                                              sessions=((["CPUExecutionProvider"], "auto"), (None, "auto")))
        if default.runtime != result.parity.runtime:     # e.g. OpenVINO EP in bf16: say what users get
            result.parity_default = default
        result.seconds["parity"] = time.perf_counter() - t1
    if cfg.engine is not None:
        from perception.tensorrt_engine import EngineBuildConfig, ensure_engine
        t2 = time.perf_counter()
        result.engine = ensure_engine(cfg.out, cfg.engine, EngineBuildConfig(
            precision=written.precision, workspace=cfg.workspace, max_batch=cfg.max_batch))
        result.seconds["engine"] = time.perf_counter() - t2
    return result


def describe_contract(contract) -> str:
    """One line for the CLI: the camera and labels the model expects (or that it records none)."""
    if contract is None:
        return "camera/label contract: none recorded (checkpoint trained before it existed)"
    c, lab = contract.camera, contract.label
    return (f"camera {c.width}x{c.height} fov {c.fov:g}, mount x={c.mount.x:g} z={c.mount.z:g} "
            f"pitch={c.mount.pitch:g}; labels lookahead {lab.lookahead_m:g} m, curve >= {lab.curve_deg:g} deg, "
            f"straight <= {lab.straight_deg:g} deg, junction policy {lab.junction_policy}")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a curve/straight checkpoint to ONNX (and a TensorRT engine).",
                                add_help=add_help)
    p.add_argument("--checkpoint", required=True, type=Path, help="training checkpoint (.pt)")
    p.add_argument("--out", required=True, type=Path, help="ONNX file to write (.onnx)")
    p.add_argument("--fp16", action="store_true", help="float16 weights/compute, float32 IO (default: FP32)")
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis (default: batch 1)")
    p.add_argument("--engine", type=Path, default=None,
                   help="also build a TensorRT engine here (.engine; needs tensorrt and an NVIDIA GPU)")
    p.add_argument("--workspace", default="1G", help="TensorRT builder workspace, e.g. 512M, 2G (default: 1G)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="TensorRT profile max batch with --dynamic-batch (default: 8)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torch exporter: torchscript (legacy, fast) or dynamo (default: torchscript)")
    p.add_argument("--frames", type=Path, default=None,
                   help="dataset dir (manifest.csv) or image dir for the parity check (default: drawn frames)")
    p.add_argument("--parity-frames", type=int, default=64, help="frames in the parity check, 0 = skip (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn parity frames (default: 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = ExportConfig(checkpoint=args.checkpoint, out=args.out, fp16=args.fp16, dynamic_batch=args.dynamic_batch,
                           engine=args.engine, workspace=args.workspace, max_batch=args.max_batch, opset=args.opset,
                           exporter=args.exporter, frames=args.frames, parity_frames=args.parity_frames,
                           seed=args.seed)
        check_output_path(cfg.out, "--out")
        check_output_path(cfg.engine, "--engine")
    except ValueError as e:
        parser.error(str(e))
    with cli_errors(debug=args.verbose, prog="carla-export", extra=(RuntimeError, ImportError)):
        result = export(cfg)
    m = result.meta
    print(f"wrote {result.onnx} ({result.onnx.stat().st_size / 1e6:.1f} MB): {m.arch}, {m.precision}, "
          f"{'dynamic' if m.dynamic_batch else 'static'} batch, input {m.img_size}x{m.img_size} {m.color_order}"
          f"{'' if m.crop_rows == FULL_FRAME else f' from rows {m.crop_rows[0]:g}-{m.crop_rows[1]:g} of the frame'}, "
          f"classes {list(m.classes)}, checkpoint sha256 {m.checkpoint_sha256[:12]}...; onnx.checker OK")
    print(describe_contract(m.contract))
    if result.cpu_decision is not None:
        print(result.cpu_decision.report())
    if result.parity is not None:
        print(result.parity)
    if result.parity_default is not None:
        print(f"{result.parity_default}  <- CurveClassifier's default session on this machine")
    if result.engine is not None:
        print(f"TensorRT engine {result.engine} (sidecar {result.engine}.json)")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

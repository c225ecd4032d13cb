"""Check, on a machine with no NVIDIA GPU, that an exported ONNX parses and builds with real TensorRT code.

Usage::

    pip install tensorrt-rtx          # real libraries (~100 MB download, ~230 MB installed); no GPU needed
    python -m perception.rtx_check --model effb0.onnx [--no-build] [--compute-capability SM86,SM89] [--json out.json]

Why: real TensorRT needs a GPU to build, so without one this project tests its TensorRT code against
stand-in modules only. TensorRT for RTX (the ``tensorrt_rtx`` module) has the TensorRT ONNX parser and
builder API, and its builder compiles ahead of time on the CPU, needing no GPU or driver. So it can say
with no GPU whether a real TensorRT-family parser takes our graph (ops, dtypes, shapes) and whether a
real builder turns it into a serialized engine.

What it does not prove: that TensorRT 10/11 builds it for Hopper (TensorRT-RTX has no SM90 target and
is a separate product), that :mod:`perception.tensorrt_engine` (engine cache, ``execute_async_v3``)
works, or anything about numerics or latency. The engine it builds is thrown away.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

from perception.meta import ModelMeta, read_onnx_meta

INSTALL_HINT = "pip install tensorrt-rtx"


class RTXUnavailableError(ImportError):
    """``tensorrt_rtx`` cannot be imported; the message says how to install it."""


def import_tensorrt_rtx() -> ModuleType:
    """``import tensorrt_rtx``, looked up at call time so the rest of the project never needs it."""
    try:
        return importlib.import_module("tensorrt_rtx")
    except ImportError as e:
        raise RTXUnavailableError(f"tensorrt_rtx is not importable ({e}); install it with: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class TensorInfo:
    """One network input or output as TensorRT parsed it (``-1`` = dynamic axis)."""
    name: str
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.name} {self.shape} {self.dtype}"


@dataclass
class RTXCheckResult:
    """What TensorRT-RTX made of one ONNX file.

    Attributes:
        onnx_path: the file checked.
        trt_rtx_version: ``tensorrt_rtx.__version__``.
        meta: the carla-perception metadata read from the ONNX.
        parsed: the ONNX parser accepted the whole graph.
        num_layers: layers in the parsed network (0 if the parse failed).
        inputs, outputs: the network's IO tensors as parsed.
        parse_errors: the parser's errors, one line each.
        unsupported_nodes: ``"node name (op type)"`` of each node the parser rejected.
        mismatches: where the parsed IO disagrees with ``meta`` (input size, batch, classes, dtypes).
        build_requested: whether an engine build was attempted.
        built: a serialized engine came out.
        engine_bytes: its size (0 if none).
        compute_capabilities: the targets asked for (empty = the library's default portable set).
        build_errors: the builder's error messages if the build failed.
        seconds: time per step (``import``, ``meta``, ``parse``, ``build``, ``total``).
    """
    onnx_path: str
    trt_rtx_version: str
    meta: ModelMeta
    parsed: bool = False
    num_layers: int = 0
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    unsupported_nodes: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    build_requested: bool = True
    built: bool = False
    engine_bytes: int = 0
    compute_capabilities: tuple[str, ...] = ()
    build_errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.parsed and not self.mismatches and (self.built or not self.build_requested)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """Human-readable report, one fact per line."""
        m = self.meta
        lines = [f"tensorrt_rtx {self.trt_rtx_version}: {self.onnx_path} ({m.arch}, {m.precision}, "
                 f"{'dynamic' if m.dynamic_batch else 'static'} batch, img_size {m.img_size})"]
        if not self.parsed:
            lines.append("parse: FAILED")
            lines += [f"  unsupported node: {n}" for n in self.unsupported_nodes]
            lines += [f"  {e}" for e in self.parse_errors]
        else:
            lines.append(f"parse: OK, {self.num_layers} layers")
            lines += [f"  input  {t}" for t in self.inputs] + [f"  output {t}" for t in self.outputs]
            lines += [f"  MISMATCH with metadata: {x}" for x in self.mismatches]
        if self.parsed and self.build_requested:
            targets = ",".join(self.compute_capabilities) or "library default"
            if self.built:
                lines.append(f"build: OK, CPU-only ahead-of-time engine for {targets}, "
                             f"{self.engine_bytes / 1e6:.1f} MB serialized in {self.seconds.get('build', 0):.2f} s "
                             f"(not kept)")
            else:
                lines.append(f"build: FAILED for {targets}")
                lines += [f"  {e}" for e in self.build_errors]
        lines.append("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items()))
        lines.append("verdict: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def _make_logger(trt: ModuleType):
    """A TensorRT logger that keeps warnings/errors (for the result) instead of printing them."""
    class _Collect(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(" ".join(str(msg).split()))
    return _Collect()


def _tensors(count: int, get) -> list[TensorInfo]:
    return [TensorInfo(t.name, tuple(int(d) for d in t.shape), t.dtype.name) for t in (get(i) for i in range(count))]


def _compare_with_meta(meta: ModelMeta, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> list[str]:
    """How the parsed IO differs from what the metadata promises (empty when consistent)."""
    out: list[str] = []
    if len(inputs) != 1 or len(outputs) != 1:
        return [f"expected 1 input and 1 output, parsed {len(inputs)} and {len(outputs)}"]
    inp, logits = inputs[0], outputs[0]
    want_batch = -1 if meta.dynamic_batch else 1
    want_in = (want_batch, 3, meta.img_size, meta.img_size)
    if inp.shape != want_in:
        out.append(f"input {inp.name} shape {inp.shape}, metadata says {want_in} "
                   f"(img_size {meta.img_size}, {'dynamic' if meta.dynamic_batch else 'static'} batch)")
    if logits.shape != (want_batch, meta.num_classes):
        out.append(f"output {logits.name} shape {logits.shape}, metadata says {(want_batch, meta.num_classes)} "
                   f"({meta.num_classes} classes)")
    for t in (inp, logits):
        if t.dtype != "FLOAT":
            out.append(f"{t.name} is {t.dtype}; our ONNX IO is float32 even for an fp16 model")
    return out


def _compute_capabilities(trt: ModuleType, names: tuple[str, ...]) -> list:
    valid = [n for n in trt.ComputeCapability.__members__ if n not in ("NONE",)]
    out = []
    for name in names:
        key = name.strip().upper()
        if key not in valid:
            raise ValueError(f"unknown compute capability {name!r}; tensorrt_rtx {trt.__version__} knows "
                             f"{', '.join(valid)} (no SM90: TensorRT-RTX cannot target Hopper)")
        out.append(trt.ComputeCapability.__members__[key])
    return out


def check_onnx_with_tensorrt_rtx(onnx_path: str | Path, build: bool = True,
                                 compute_capabilities: tuple[str, ...] = (), max_batch: int = 8) -> RTXCheckResult:
    """Parse ``onnx_path`` with TensorRT-RTX's ONNX parser and (``build``) build a serialized engine on the CPU.

    The network is strongly typed, as on TensorRT 11 (precision comes from the ONNX). A dynamic-batch
    ONNX gets one optimisation profile 1..``max_batch`` tuned at 1, like
    :func:`perception.tensorrt_engine.build_engine`. No timing cache is used. Parse and build failures
    are reported in the result, not raised.

    Args:
        compute_capabilities: targets such as ``("SM86", "SM89")``; empty = the library default.
            ``CURRENT`` needs a GPU and fails without one.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ``.onnx``, unreadable, no carla-perception metadata, or an unknown
            compute capability.
        RTXUnavailableError: ``tensorrt_rtx`` cannot be imported.
    """
    t0 = time.perf_counter()
    path = Path(onnx_path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path} is not an .onnx file")
    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    meta = read_onnx_meta(path)              # before the import: a broken file is reported as such
    t_meta = time.perf_counter()
    trt = import_tensorrt_rtx()
    targets = _compute_capabilities(trt, tuple(compute_capabilities))
    t_import = time.perf_counter()
    result = RTXCheckResult(str(path), str(trt.__version__), meta, build_requested=build,
                            compute_capabilities=tuple(c.name for c in targets))

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    result.parsed = bool(parser.parse_from_file(str(path)))
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        result.parse_errors.append(" ".join(str(err).split()))
        if err.node() >= 0:
            result.unsupported_nodes.append(f"{err.node_name() or '#' + str(err.node())} ({err.node_operator()})")
    t_parse = time.perf_counter()
    result.seconds = {"meta": t_meta - t0, "import": t_import - t_meta, "parse": t_parse - t_import}
    if result.parsed:
        result.num_layers = network.num_layers
        result.inputs = _tensors(network.num_inputs, network.get_input)
        result.outputs = _tensors(network.num_outputs, network.get_output)
        result.mismatches = _compare_with_meta(meta, result.inputs, result.outputs)

    if result.parsed and build:
        config = builder.create_builder_config()
        if targets:
            config.num_compute_capabilities = len(targets)
            for i, cc in enumerate(targets):
                config.set_compute_capability(cc, i)
        inp = network.get_input(0)
        if inp.shape[0] == -1:
            rest = tuple(inp.shape)[1:]
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, (1, *rest), (1, *rest), (max_batch, *rest))
            config.add_optimization_profile(profile)
        logger.errors.clear()
        plan = builder.build_serialized_network(network, config)
        result.built = plan is not None
        result.engine_bytes = int(plan.nbytes) if plan is not None else 0
        result.build_errors = list(logger.errors) if plan is None else []
        result.seconds["build"] = time.perf_counter() - t_parse
    result.seconds["total"] = time.perf_counter() - t0
    return result


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Check with TensorRT-RTX (CPU only, no GPU needed) that an exported ONNX parses and builds. "
                    "Proves the graph is accepted by a real TensorRT-family parser/builder; says nothing about "
                    "TensorRT 10/11 on Hopper, our engine runner, or latency.", add_help=add_help)
    p.add_argument("--model", required=True, type=Path, help="ONNX file written by perception.export")
    p.add_argument("--no-build", action="store_true", help="parse only, skip the engine build")
    p.add_argument("--compute-capability", default="",
                   help="comma-separated targets, e.g. SM86,SM89 (default: the library's portable set)")
    p.add_argument("--max-batch", type=int, default=8, help="top of the profile for a dynamic-batch ONNX (default: 8)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the check passes, 1 when TensorRT-RTX rejects the model, 2 on a usage error."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.model.suffix.lower() != ".onnx":
        parser.error(f"--model {args.model} is not an .onnx file")
    if not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    if args.max_batch < 1:
        parser.error(f"--max-batch must be >= 1, got {args.max_batch}")
    ccs = tuple(c for c in args.compute_capability.split(",") if c.strip())
    try:
        result = check_onnx_with_tensorrt_rtx(args.model, build=not args.no_build, compute_capabilities=ccs,
                                              max_batch=args.max_batch)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"rtx check failed: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

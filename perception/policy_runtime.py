"""Driving-policy inference: one or several policies behind one call, in torch, ONNX Runtime or TensorRT.

The experts a gate may blend are exported *together* (:class:`training.policy.PolicyStack`): one
preprocessing of the frame and one session run give every expert's controls, so the soft gate,
which needs both experts on every tick, pays one call, not two.

ONNX file: inputs ``image`` float32 Nx3xHxW (RGB, normalised with the stored mean/std), ``speed``
float32 Nx1 (km/h / ``speed_scale_kmh``), ``command`` float32 NxC one-hot over ``commands``; output
``controls`` float32 NxEx3 (steer, throttle, brake per expert, in ``experts`` order).
Metadata ``policy_meta`` (JSON) holds experts, input size, normalisation, commands, speed scale and
each expert's camera/label contract.

TensorRT (backend ``tensorrt``) reuses the classifier's engine machinery (:mod:`perception.tensorrt_engine`:
TensorRT 10 or 11 API by feature test, :class:`~perception.tensorrt_engine.EngineKey` sidecar, rebuild on
any mismatch, persisted timing cache); what differs is the policy's three inputs, which the build gives
one optimisation profile and :class:`PolicyEngineRunner` binds by name.

Example::

    python -m perception.policy_runtime export --expert curve=runs/policy/curve/weights/best.pt \\
        --expert straight=runs/policy/straight/weights/best.pt --out runs/policy/moe.onnx [--engine]
    python -m perception.policy_runtime bench --backend tensorrt --expert curve=... --expert straight=...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from carla_client.route_command import COMMANDS
from datasets.preprocess import normalize, to_rgb_resized_hw

log = logging.getLogger(__name__)

POLICY_BACKENDS = ("onnxruntime", "torch", "tensorrt")
META_KEY = "policy_meta"
INPUT_NAMES = ("image", "speed", "command")
OUTPUT_NAME = "controls"


@dataclass(frozen=True)
class PolicyMeta:
    """What inference needs besides the weights."""
    experts: tuple[str, ...]
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    commands: tuple[str, ...]
    speed_scale_kmh: float
    contracts: dict

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "PolicyMeta":
        return cls(tuple(d["experts"]), tuple(d["input_hw"]), tuple(d["mean"]), tuple(d["std"]),
                   tuple(d["commands"]), float(d["speed_scale_kmh"]), dict(d.get("contracts") or {}))


def load_stack(checkpoints: Mapping[str, str | Path]):
    """(PolicyStack in eval mode, PolicyMeta) from ``name -> policy checkpoint``.

    Raises:
        ValueError: the policies disagree on input size, normalisation or commands (they share one input).
    """
    from training.policy import PolicyStack, load_policy_checkpoint
    if not checkpoints:
        raise ValueError("no policy checkpoint given")
    models, cfgs = [], []
    for name, path in checkpoints.items():
        m, c = load_policy_checkpoint(path)
        models.append(m)
        cfgs.append(c)
    first = cfgs[0]
    for name, c in zip(checkpoints, cfgs):
        for key in ("input_hw", "mean", "std", "commands", "speed_scale_kmh"):
            if list(np.atleast_1d(c[key])) != list(np.atleast_1d(first[key])):
                raise ValueError(f"policy {name!r} has {key}={c[key]}, {next(iter(checkpoints))!r} has {first[key]}: "
                                 "experts run on one input; train them with the same --arch/--input-hw")
    meta = PolicyMeta(tuple(checkpoints), tuple(first["input_hw"]), tuple(first["mean"]), tuple(first["std"]),
                      tuple(first["commands"]), float(first["speed_scale_kmh"]),
                      {n: c.get("contract") for n, c in zip(checkpoints, cfgs)})
    return PolicyStack(models).eval(), meta


def export_policy_onnx(checkpoints: Mapping[str, str | Path], out: str | Path, opset: int = 17) -> Path:
    """Export the stacked policies to ONNX (dynamic batch), metadata included; runs ``onnx.checker``."""
    import onnx
    import torch
    stack, meta = load_stack(checkpoints)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = meta.input_hw
    args = (torch.zeros(1, 3, h, w), torch.zeros(1, 1), torch.zeros(1, len(meta.commands)))
    names = list(INPUT_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(stack, args, str(out), dynamo=False, opset_version=opset, input_names=names,
                          output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load(str(out))
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta.to_json()))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return out


def read_policy_meta(path: str | Path) -> PolicyMeta:
    """The :class:`PolicyMeta` of a policy ONNX (read with ``onnx``, no session). Raises ValueError otherwise."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX file ({e.__class__.__name__}: {e})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ValueError(f"{path}: not a policy ONNX (no {META_KEY} metadata); export with perception.policy_runtime")
    return PolicyMeta.from_json(json.loads(props[META_KEY]))


def cached_stack_onnx(checkpoints: Mapping[str, str | Path]) -> Path:
    """The stacked ONNX of ``checkpoints`` in the perception cache dir, exported on first use.

    Keyed by the expert names and the checkpoints' SHA-256, so the same experts map to the same file and
    a TensorRT engine built from it is reused by later runs (an export to a fresh temp file would make
    every run rebuild the engine, minutes each)."""
    from perception.formats import default_cache_dir
    from perception.meta import sha256_file
    if not checkpoints:
        raise ValueError("no policy checkpoint given")
    for name, path in checkpoints.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"policy checkpoint {str(path)!r} ({name}): no such file")
    key = json.dumps([[name, sha256_file(path)] for name, path in checkpoints.items()])
    out = default_cache_dir() / "policy" / f"stack-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    if not out.is_file():
        tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.onnx")
        export_policy_onnx(checkpoints, tmp)
        os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------ TensorRT

def policy_engine_key(onnx_path: Path, cfg, trt):
    """The :class:`~perception.tensorrt_engine.EngineKey` an engine of ``onnx_path`` built here with ``cfg``
    would have. The policy ONNX is fp32: TensorRT 10 may still build fp16 (builder flag); TensorRT 11
    builds strongly typed networks, whose precision is the ONNX's, so only fp32."""
    from perception import tensorrt_engine as te
    from perception.meta import sha256_file
    precision = cfg.precision or "fp32"
    if te.is_strongly_typed_api(trt) and precision != "fp32":
        raise ValueError(f"TensorRT {trt.__version__} builds strongly typed networks, whose precision is the ONNX's, "
                         f"and the policy ONNX is fp32: build the policy engine in fp32")
    gpu_name, cc = te.gpu_identity()
    batch = te._onnx_batch(onnx_path)
    return te.EngineKey(sha256_file(onnx_path), str(trt.__version__), gpu_name, cc, precision,
                        cfg.max_batch if batch is None else batch)


def build_policy_engine(onnx_path: str | Path, engine_path: str | Path, cfg=None):
    """:func:`perception.tensorrt_engine.build_engine` for the policy ONNX: the same API choice, workspace,
    precision and timing cache, but ONE optimisation profile giving every dynamic input (image, speed,
    command) the batch range 1..max_batch (TensorRT refuses a dynamic input the profile leaves out), and a
    sidecar holding the :class:`PolicyMeta`. Returns the EngineKey.

    Raises:
        RuntimeError: the ONNX does not parse or the build fails (TensorRT's own errors included).
        ValueError: not a policy ONNX, or fp16 asked of TensorRT 11.
    """
    from perception import tensorrt_engine as te
    cfg = cfg or te.EngineBuildConfig()
    trt = te.import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_policy_meta(onnx_path)
    key = policy_engine_key(onnx_path, cfg, trt)
    strong = te.is_strongly_typed_api(trt)
    t0 = time.perf_counter()

    def check_inputs(shapes):
        if sorted(shapes) != sorted(INPUT_NAMES):
            raise ValueError(f"{onnx_path}: policy inputs are {', '.join(INPUT_NAMES)}, this ONNX has {', '.join(shapes)}")

    plan, shapes = te.serialize_network(trt, onnx_path, key, cfg, strong, check_inputs)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(plan)
    cache_path = te._timing_cache_path(cfg, key.trt_version, key.gpu_name, key.compute_capability)
    sidecar = {"key": asdict(key), "policy_meta": meta.to_json(), "onnx": str(onnx_path.resolve()),
               "api": "strongly-typed" if strong else "builder-flag",
               "input_shapes": {n: [key.max_batch if d == -1 else int(d) for d in s] for n, s in shapes.items()},
               "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    te.sidecar_path(engine_path).write_text(json.dumps(sidecar, indent=2))
    log.info("built TensorRT %s %s policy engine %s in %.1f s (%s API, timing cache %s)", key.trt_version,
             key.precision, engine_path, time.perf_counter() - t0, sidecar["api"], cache_path)
    return key


def ensure_policy_engine(onnx_path: str | Path, engine_path: str | Path | None = None, cfg=None) -> Path:
    """An engine of the policy ONNX valid on this machine (default: the ONNX's sibling ``.engine``), built
    on first use and rebuilt, with ONE warning line naming what changed, when the ONNX, TensorRT, GPU or
    precision differ from what its sidecar records (:func:`perception.tensorrt_engine.ensure_engine`'s rule)."""
    from perception import tensorrt_engine as te
    cfg = cfg or te.EngineBuildConfig()
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    want = policy_engine_key(onnx_path, cfg, te.import_tensorrt())
    side = te.read_sidecar(engine_path) if engine_path.is_file() else None
    if side is not None and "policy_meta" in side:
        diffs = te.EngineKey(**side["key"]).differences(want)
        if not diffs:
            return engine_path
        log.warning("rebuilding TensorRT policy engine %s: %s", engine_path, "; ".join(diffs))
    elif engine_path.is_file():
        log.warning("rebuilding TensorRT policy engine %s: no policy sidecar %s to verify it", engine_path,
                    te.sidecar_path(engine_path).name)
    else:
        log.info("building TensorRT policy engine %s from %s (first use; cached for later runs)", engine_path, onnx_path)
    build_policy_engine(onnx_path, engine_path, cfg)
    return engine_path


def validate_policy_engine(engine_path: str | Path) -> Path:
    """A policy ``.engine`` checked against this machine (TensorRT version, GPU), rebuilt from its source
    ONNX when stale.

    Raises:
        ValueError: no sidecar with policy metadata (e.g. a classifier's engine).
        EngineMismatchError: stale and the source ONNX is gone (says what differs and how to fix it).
    """
    from perception import tensorrt_engine as te
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FileNotFoundError(f"policy engine {str(engine_path)!r}: no such file")
    side = te.read_sidecar(engine_path)
    if side is None or "policy_meta" not in side:
        raise ValueError(f"{engine_path}: not a policy engine (no sidecar {te.sidecar_path(engine_path).name} with "
                         f"{META_KEY}); build it with: python -m perception.policy_runtime export ... --engine")
    trt = te.import_tensorrt()
    have = te.EngineKey(**side["key"])
    gpu_name, cc = te.gpu_identity()
    diffs = have.differences(te.EngineKey(have.onnx_sha256, str(trt.__version__), gpu_name, cc, have.precision,
                                          have.max_batch))
    if not diffs:
        return engine_path
    onnx_path = Path(side["onnx"]) if side.get("onnx") else engine_path.with_suffix(".onnx")
    if not onnx_path.is_file() and engine_path.with_suffix(".onnx").is_file():
        onnx_path = engine_path.with_suffix(".onnx")
    if onnx_path.is_file():
        return ensure_policy_engine(onnx_path, engine_path,
                                    te.EngineBuildConfig(precision=have.precision, max_batch=have.max_batch))
    raise te.EngineMismatchError(
        f"policy engine {engine_path} cannot run here ({'; '.join(diffs)}) and cannot be rebuilt: source ONNX "
        f"{onnx_path} not found; re-export with 'python -m perception.policy_runtime export --expert NAME=CKPT ... "
        f"--out {engine_path.with_suffix('.onnx').name} --engine'")


class PolicyEngineRunner:
    """Runs a policy engine: inputs image/speed/command, output controls; callable as the runtime's ``run``.

    As :class:`perception.tensorrt_engine.TensorRTRunner` runs the classifier's one-input engine: the
    buffers are torch tensors on ``device`` sized for ``max_batch`` whose ``data_ptr()`` is bound by name
    with ``set_tensor_address``; the input shapes and addresses are set only when the batch size changes;
    each call copies the three inputs in, enqueues ``execute_async_v3`` on a private CUDA stream and
    copies the controls out.
    """

    def __init__(self, engine_bytes: bytes, max_batch: int, device: str = "cuda") -> None:
        import torch
        from perception import tensorrt_engine as te
        trt = te.import_tensorrt()
        self._torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise te.EngineMismatchError(f"TensorRT {trt.__version__} could not deserialize the policy engine "
                                         f"(built by another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(INPUT_NAMES) or outputs != [OUTPUT_NAME]:
            raise ValueError(f"expected a policy engine with inputs {', '.join(INPUT_NAMES)} and output {OUTPUT_NAME}, "
                             f"got inputs={inputs} outputs={outputs}")
        shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in names}
        self.dynamic = shapes["image"][0] == -1
        self.max_batch = max_batch if self.dynamic else shapes["image"][0]
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._buf = {}
        for n in names:
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
            self._buf[n] = torch.empty((self.max_batch, *shapes[n][1:]), dtype=dtype, device=self.device)
        self._bound_batch: int | None = None

    def _bind(self, batch: int) -> None:
        for name in INPUT_NAMES:
            shape = (batch, *self._buf[name].shape[1:])
            if self.dynamic and not self.context.set_input_shape(name, shape):
                raise ValueError(f"TensorRT rejected {name} shape {shape} (profile max batch {self.max_batch})")
        for name in (*INPUT_NAMES, OUTPUT_NAME):
            self.context.set_tensor_address(name, self._buf[name].data_ptr())
        self._bound_batch = batch

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream if self.stream is not None else 0):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def __call__(self, image: np.ndarray, speed: np.ndarray, command: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = image.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch {n} exceeds the policy engine's max batch {self.max_batch}")
        if not (len(speed) == len(command) == n):
            raise ValueError(f"image, speed and command need one row per sample, got {n}, {len(speed)}, {len(command)}")
        if n != self._bound_batch:
            self._bind(n)
        host = {"image": image, "speed": speed, "command": command}
        if self.stream is None:
            for name, a in host.items():
                self._buf[name][:n].copy_(torch.from_numpy(np.ascontiguousarray(a)))
            self._enqueue()
            return self._buf[OUTPUT_NAME][:n].float().numpy().copy()
        with torch.cuda.stream(self.stream):
            for name, a in host.items():
                self._buf[name][:n].copy_(torch.from_numpy(np.ascontiguousarray(a)))
            self._enqueue()
            out = self._buf[OUTPUT_NAME][:n].float().cpu()
        return out.numpy()


class PolicyRuntime:
    """Run the stacked policies on a raw frame: ``predict(frame_bgra, speed_kmh, command) -> (E, 3)``.

    Args:
        meta: the policies' metadata.
        run: ``(image, speed, command) -> (N, E, 3)`` on numpy float32 arrays.
        backend: name, for reports.
    """

    def __init__(self, meta: PolicyMeta, run, backend: str) -> None:
        self.meta = meta
        self._run = run
        self.backend = backend
        self.experts = meta.experts

    @classmethod
    def load(cls, source, backend: str = "onnxruntime", threads: int = 1, device: str = "cuda",
             engine_config=None) -> "PolicyRuntime":
        """``source``: an ``.onnx`` written by :func:`export_policy_onnx`, a mapping ``name -> policy .pt``,
        or (tensorrt) a policy ``.engine``.

        torch needs the mapping; onnxruntime exports a mapping to a temp file; tensorrt builds an engine
        beside the ``.onnx`` on first use and reuses it while its sidecar matches this machine (a mapping
        is exported once into the perception cache dir, see :func:`cached_stack_onnx`). ``device`` and
        ``engine_config`` (a :class:`perception.tensorrt_engine.EngineBuildConfig`) are tensorrt's.

        Raises:
            RuntimeError: tensorrt asked for where it cannot run (not importable, no CUDA GPU).
        """
        if backend not in POLICY_BACKENDS:
            raise ValueError(f"unknown policy backend {backend!r}; valid: {', '.join(POLICY_BACKENDS)}")
        if backend == "tensorrt":
            return cls._tensorrt(source, device, engine_config)
        if isinstance(source, (str, Path)):
            if Path(source).suffix == ".engine":
                raise ValueError(f"{source} is a TensorRT engine: load it with backend tensorrt")
            if backend != "onnxruntime":
                raise ValueError("the torch backend needs the policy checkpoints (name=path.pt), not an .onnx")
            return cls._onnx(Path(source), threads)
        if backend == "torch":
            return cls._torch(source, threads)
        import tempfile
        tmp = Path(tempfile.mkdtemp(prefix="policy_onnx_")) / "stack.onnx"
        return cls._onnx(export_policy_onnx(source, tmp), threads)

    @classmethod
    def _torch(cls, checkpoints, threads: int) -> "PolicyRuntime":
        import torch
        stack, meta = load_stack(checkpoints)
        if threads:
            torch.set_num_threads(threads)

        def run(image, speed, command):
            with torch.inference_mode():
                return stack(torch.from_numpy(image), torch.from_numpy(speed), torch.from_numpy(command)).numpy()
        return cls(meta, run, "torch")

    @classmethod
    def _onnx(cls, path: Path, threads: int) -> "PolicyRuntime":
        import onnxruntime as ort
        if not path.is_file():
            raise FileNotFoundError(f"policy model {str(path)!r}: no such file")
        from perception.backends.onnxruntime_backend import session_options
        sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        props = sess.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ValueError(f"{path}: not a policy ONNX (no {META_KEY} metadata); export with perception.policy_runtime")
        meta = PolicyMeta.from_json(json.loads(props[META_KEY]))

        def run(image, speed, command):
            return sess.run(["controls"], {"image": image, "speed": speed, "command": command})[0]
        return cls(meta, run, "onnxruntime")

    @classmethod
    def _tensorrt(cls, source, device: str, engine_config) -> "PolicyRuntime":
        from perception import tensorrt_engine as te
        try:
            te.import_tensorrt()
        except ImportError as e:
            raise RuntimeError(f"policy backend 'tensorrt' is unavailable: tensorrt not importable ({e}); "
                               f"use onnxruntime or torch") from None
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"policy model {str(path)!r}: no such file")
            engine = validate_policy_engine(path) if path.suffix == ".engine" else \
                ensure_policy_engine(path, cfg=engine_config)
        else:
            engine = ensure_policy_engine(cached_stack_onnx(source), cfg=engine_config)
        side = te.read_sidecar(engine)
        runner = PolicyEngineRunner(engine.read_bytes(), int(side["key"]["max_batch"]), device)
        rt = cls(PolicyMeta.from_json(side["policy_meta"]), runner, "tensorrt")
        rt.engine_path = engine
        return rt

    def inputs(self, frame: np.ndarray, speed_kmh: float, command: str, color_order: str = "BGRA"):
        """Model inputs (batch 1) for one raw frame."""
        rgb = to_rgb_resized_hw(frame, self.meta.input_hw, color_order)
        image = normalize(rgb, self.meta.mean, self.meta.std)[None]
        speed = np.array([[speed_kmh / self.meta.speed_scale_kmh]], np.float32)
        onehot = np.zeros((1, len(self.meta.commands)), np.float32)
        onehot[0, self.meta.commands.index(command) if command in self.meta.commands else 0] = 1.0
        return image, speed, onehot

    def run(self, image: np.ndarray, speed: np.ndarray, command: np.ndarray) -> np.ndarray:
        """Prepared inputs -> (N, E, 3)."""
        return np.asarray(self._run(image, speed, command), dtype=np.float32)

    def predict(self, frame: np.ndarray, speed_kmh: float, command: str, color_order: str = "BGRA") -> np.ndarray:
        """(E, 3) controls of every expert for one raw frame."""
        return self.run(*self.inputs(frame, speed_kmh, command, color_order))[0]


def latency(fn, frames: list[np.ndarray], warmup: int = 5) -> dict:
    """p50/p99/mean ms of ``fn(frame)`` over ``frames`` (after ``warmup`` calls)."""
    for f in frames[:warmup]:
        fn(f)
    ms = []
    for f in frames:
        t0 = time.perf_counter()
        fn(f)
        ms.append((time.perf_counter() - t0) * 1000.0)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(np.mean(ms)), "n": len(ms)}


def bench(classifier: str | None, experts: Mapping[str, str], res: tuple[int, int] = (200, 150), n: int = 300,
          threads: int = 1, backend: str = "onnxruntime", seed: int = 0) -> dict:
    """Per-frame latency on this machine, variants interleaved frame by frame (a shared machine's load
    hits them alike): classifier alone, the active expert alone (a one-expert stack), both experts in
    one batched call, two separate expert calls, and classifier + batched experts (the MoE tick).

    Returns ``{variant: {p50_ms, p99_ms, mean_ms, cpu_p50_ms, cpu_p99_ms, n}}`` (wall clock, and the
    process CPU time, which a machine shared with other jobs inflates far less); frames are random
    BGRA at ``res`` (W, H).
    """
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (res[1], res[0], 4), dtype=np.uint8) for _ in range(16)]
    names = list(experts)
    both = PolicyRuntime.load(dict(experts), backend, threads)
    single = {k: PolicyRuntime.load({k: experts[k]}, backend, threads) for k in names}
    variants = {f"expert {names[0]} alone": lambda f: single[names[0]].predict(f, 30.0, "LANEFOLLOW"),
                f"{len(names)} experts batched": lambda f: both.predict(f, 30.0, "LANEFOLLOW"),
                f"{len(names)} experts, separate calls": lambda f: [single[k].predict(f, 30.0, "LANEFOLLOW")
                                                                    for k in names]}
    if classifier:
        from perception.classifier import CurveClassifier
        cls = CurveClassifier.load(classifier, backend="onnxruntime", warmup=5)
        variants["classifier"] = cls.predict
        variants["classifier + active expert"] = lambda f: (cls.predict(f), single[names[0]].predict(f, 30.0, "LEFT"))
        variants[f"classifier + {len(names)} experts batched"] = lambda f: (cls.predict(f), both.predict(f, 30.0, "LEFT"))
    ms = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for i in range(n + 10):
        f = frames[i % len(frames)]
        for k, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(f)
            if i >= 10:
                ms[k].append((time.perf_counter() - t0) * 1000.0)
                cpu[k].append((time.process_time() - c0) * 1000.0)
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                "mean_ms": float(np.mean(v)), "cpu_p50_ms": float(np.percentile(cpu[k], 50)),
                "cpu_p99_ms": float(np.percentile(cpu[k], 99)), "n": len(v)} for k, v in ms.items()}


def _parse_experts(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--expert {item!r}: expected NAME=PATH.pt")
        name, path = item.split("=", 1)
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export driving policies (stacked) to ONNX (+ TensorRT engine), check "
                                "parity, time them")
    p.add_argument("command", choices=("export", "bench"), help="export (+ parity check) or bench (latency)")
    p.add_argument("--expert", action="append", default=[], metavar="NAME=PATH.pt", help="a policy checkpoint")
    p.add_argument("--out", default=None, help="export: ONNX file to write")
    p.add_argument("--engine", action="store_true",
                   help="export: also build the TensorRT engine beside the ONNX (needs tensorrt and a CUDA GPU) "
                        "and check its parity")
    p.add_argument("--backend", default="onnxruntime", choices=POLICY_BACKENDS, help="bench: policy runtime backend")
    p.add_argument("--classifier", default=None, help="bench: classifier model (.pt/.onnx)")
    p.add_argument("--res", default="200x150", help="bench: camera WxH of the frames")
    p.add_argument("--frames", type=int, default=300, help="bench: timed frames per variant")
    p.add_argument("--threads", type=int, default=1, help="bench: intra-op threads of the policy runtime")
    args = p.parse_args(argv)
    if args.command == "bench":
        try:
            w, h = (int(v) for v in args.res.lower().split("x"))
            result = bench(args.classifier, _parse_experts(args.expert), (w, h), args.frames, args.threads,
                           args.backend)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"policy backend {args.backend}")
        for k, v in result.items():
            print(f"{k:40s} wall p50 {v['p50_ms']:6.2f} p99 {v['p99_ms']:6.2f} ms | CPU time p50 {v['cpu_p50_ms']:6.2f} "
                  f"p99 {v['cpu_p99_ms']:6.2f} ms  (n={v['n']})")
        return 0
    if not args.out:
        print("error: export needs --out FILE.onnx", file=sys.stderr)
        return 2
    try:
        ckpts = _parse_experts(args.expert)
        path = export_policy_onnx(ckpts, args.out)
        ref = PolicyRuntime.load(ckpts, "torch")
        ort_rt = PolicyRuntime.load(path, "onnxruntime")
        rng = np.random.default_rng(0)
        h, w = ref.meta.input_hw
        x = (rng.standard_normal((4, 3, h, w)).astype(np.float32), rng.random((4, 1), np.float32),
             np.eye(len(COMMANDS), dtype=np.float32)[rng.integers(0, len(COMMANDS), 4)])
        want = ref.run(*x)
        diff = float(np.max(np.abs(want - ort_rt.run(*x))))
        if args.engine:
            trt_rt = PolicyRuntime.load(path, "tensorrt")
            trt_diff = float(np.max(np.abs(want - trt_rt.run(*x))))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (experts {', '.join(ckpts)}); max |onnx - torch| = {diff:.2e}")
    if args.engine:
        print(f"wrote {trt_rt.engine_path}; max |tensorrt - torch| = {trt_diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

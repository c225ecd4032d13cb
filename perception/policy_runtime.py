"""Driving-policy inference: one or several policies behind one call, in torch or ONNX Runtime.

The experts a gate may blend are exported *together* (:class:`training.policy.PolicyStack`): one
preprocessing of the frame and one session run give every expert's controls, so the soft gate,
which needs both experts on every tick, pays one call, not two.

ONNX file: inputs ``image`` float32 Nx3xHxW (RGB, normalised with the stored mean/std), ``speed``
float32 Nx1 (km/h / ``speed_scale_kmh``), ``command`` float32 NxC one-hot over ``commands``; output
``controls`` float32 NxEx3 (steer, throttle, brake per expert, in ``experts`` order).
Metadata ``policy_meta`` (JSON) holds experts, input size, normalisation, commands, speed scale and
each expert's camera/label contract.

Example::

    python -m perception.policy_runtime export --expert curve=runs/policy/curve/weights/best.pt \\
        --expert straight=runs/policy/straight/weights/best.pt --out runs/policy/moe.onnx
"""
from __future__ import annotations

import argparse
import json
import logging
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

POLICY_BACKENDS = ("onnxruntime", "torch")
META_KEY = "policy_meta"


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
    names = ["image", "speed", "command"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(stack, args, str(out), dynamo=False, opset_version=opset, input_names=names,
                          output_names=["controls"], do_constant_folding=True,
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "controls": {0: "batch"}})
    proto = onnx.load(str(out))
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta.to_json()))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return out


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
    def load(cls, source, backend: str = "onnxruntime", threads: int = 1) -> "PolicyRuntime":
        """``source``: an ``.onnx`` written by :func:`export_policy_onnx` (either backend: torch then needs
        ``name -> .pt``) or a mapping ``name -> policy .pt`` (torch; onnxruntime exports to a temp file)."""
        if backend not in POLICY_BACKENDS:
            raise ValueError(f"unknown policy backend {backend!r}; valid: {', '.join(POLICY_BACKENDS)}")
        if isinstance(source, (str, Path)):
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
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        props = sess.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ValueError(f"{path}: not a policy ONNX (no {META_KEY} metadata); export with perception.policy_runtime")
        meta = PolicyMeta.from_json(json.loads(props[META_KEY]))

        def run(image, speed, command):
            return sess.run(["controls"], {"image": image, "speed": speed, "command": command})[0]
        return cls(meta, run, "onnxruntime")

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
    p = argparse.ArgumentParser(description="Export driving policies (stacked) to ONNX, check parity, time them")
    p.add_argument("command", choices=("export", "bench"), help="export (+ parity check) or bench (latency)")
    p.add_argument("--expert", action="append", default=[], metavar="NAME=PATH.pt", help="a policy checkpoint")
    p.add_argument("--out", default=None, help="export: ONNX file to write")
    p.add_argument("--classifier", default=None, help="bench: classifier model (.pt/.onnx)")
    p.add_argument("--res", default="200x150", help="bench: camera WxH of the frames")
    p.add_argument("--frames", type=int, default=300, help="bench: timed frames per variant")
    p.add_argument("--threads", type=int, default=1, help="bench: intra-op threads of the policy runtime")
    args = p.parse_args(argv)
    if args.command == "bench":
        try:
            w, h = (int(v) for v in args.res.lower().split("x"))
            result = bench(args.classifier, _parse_experts(args.expert), (w, h), args.frames, args.threads)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
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
        diff = float(np.max(np.abs(ref.run(*x) - ort_rt.run(*x))))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (experts {', '.join(ckpts)}); max |onnx - torch| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

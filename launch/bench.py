"""Closed-loop benchmark: per-stage cost and loop FPS of the full drive (sim, inference, control, overlay, encode).

Example::

    python -m launch.bench --sim embedded --town Town02 --model m.onnx --frames 300 --res 800x600

Runs headless with the HUD and video recording on (the expensive configuration), after a short
unmeasured episode that warms every cache (town raster, renderer, encoder, classifier). The HUD and
the encoder run on the recording thread (stages ``bg_overlay``, ``bg_encode``, beside the loop); the
loop's own share of the video is ``record`` (copy and hand-off). Target on a
2-core CPU with ONNX Runtime: >= 100 FPS with the defaults (unpinned process, the simulator's and
the classifier's own thread counts; ``CARLA_EMBEDDED_THREADS``, ``CARLA_PERCEPTION_THREADS`` change
them). The output names the CPU model, the load average and those thread counts.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from carla_client.cli import add_carla_args
from control.gates import gate_names
from launch.loop import DriveConfig, load_classifier, open_world, run_episode

STAGES = ("tick", "infer", "control", "overlay", "record", "display")


@dataclass
class BenchConfig:
    drive: DriveConfig
    warmup_frames: int = 20
    record: bool = True
    json_out: str | None = None

    def __post_init__(self) -> None:
        if self.warmup_frames < 0:
            raise ValueError(f"--warmup-frames must be >= 0, got {self.warmup_frames}")


def run_bench(cfg: BenchConfig) -> dict:
    """Drive ``cfg.drive.frames`` ticks headless and return ``{"loop_fps", "stages", ...}``."""
    d = cfg.drive
    classifier = load_classifier(d.model, d.backend, d.warmup)
    ctx = open_world(d)
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.warmup_frames:
            warm = DriveConfig(**{**d.__dict__, "frames": cfg.warmup_frames, "metrics": None,
                                  "record": str(Path(tmp) / "warm.mp4") if cfg.record else None})
            run_episode(ctx, warm, classifier)
        measured = DriveConfig(**{**d.__dict__, "metrics": None,
                                  "record": str(Path(tmp) / "bench.mp4") if cfg.record else None})
        result = run_episode(ctx, measured, classifier)
    m = result.metrics
    out = {"loop_fps": m["loop_fps"], "frames": m["ticks"], "res": list(d.res), "gate": d.gate, "model": d.model,
           "backend": getattr(classifier, "backend_name", None), "record": cfg.record, "host": _host(classifier),
           "stages": {k: v for k, v in m["stages"].items()}}
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(out, indent=2))
    return out


def _host(classifier) -> str:
    """CPU model, CPUs this process may use, the load at the end (other jobs skew the figures), and
    the thread counts the run had (what users get by default)."""
    import os

    import cv2

    from perception.cpu_tune import cpu_model
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = classifier.backend.describe() if classifier is not None else "no classifier"
    load = "load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "load average ?"
    return f"{cpu_model()}; {cpus} CPUs usable, {load}; OpenCV {cv2.getNumThreads()} thread(s); {device}"


def format_bench(out: dict) -> str:
    stages = out["stages"]
    fg = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES and not s.startswith("bg_")]
    bg = [s for s in stages if s.startswith("bg_")]
    total = sum(stages[s]["mean_ms"] for s in fg)
    lines = [f"closed loop: {out['frames']} frames at {out['res'][0]}x{out['res'][1]}, gate {out['gate']}, "
             f"backend {out['backend'] or '-'}, video {'on' if out['record'] else 'off'}",
             f"host: {out.get('host', '?')}",
             f"{'stage':<12}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'share':>8}"]
    for name in fg + bg:
        s = stages[name]
        share = "bg" if name in bg else f"{s['mean_ms'] / total:.0%}"
        lines.append(f"{name:<12}{s['mean_ms']:>9.2f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{share:>8}")
    if bg:
        lines.append("bg_*: the recording thread (HUD, H.264), beside the loop: not in its time")
    lines.append(f"loop FPS: {out['loop_fps']:.1f} (target >= 100 on 2 cores with ONNX Runtime)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Closed-loop benchmark of the drive.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--town", default="Town02")
    p.add_argument("--model", default=None, help="classifier; without it the oracle gate runs and 'infer' is absent")
    p.add_argument("--backend", default="auto")
    p.add_argument("--gate", default=None, choices=gate_names(), help="default: hard with a model, else oracle")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--warmup-frames", type=int, default=20)
    p.add_argument("--no-record", dest="record", action="store_false", help="leave video encoding out")
    p.add_argument("--json", default=None, metavar="OUT.json")
    add_carla_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        drive = DriveConfig(town=args.town, model=args.model, sim=args.sim, host=args.host, port=args.port,
                            timeout=args.timeout, backend=args.backend,
                            gate=args.gate or ("hard" if args.model else "oracle"), frames=args.frames,
                            display=False, realtime=False, seed=args.seed, res=args.res)
        cfg = BenchConfig(drive=drive, warmup_frames=args.warmup_frames, record=args.record, json_out=args.json)
    except ValueError as e:
        p.error(str(e))
    print(format_bench(run_bench(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

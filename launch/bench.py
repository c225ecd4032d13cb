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

``--perception-threads auto,1,2`` compares the default (``auto``: the classifier's own choice,
:mod:`perception.cpu_tune`) with the classifier at fixed intra-op thread counts in one process:
the configurations drive the same route start in alternating blocks (``--blocks``), so a slow
phase of a shared machine hits all of them, and the ratios to the default are medians of
per-block ratios. On a noisy VM the loop rate of the
same configuration moved from 73 to 102 FPS between two runs a minute apart; only such
interleaved ratios say which configuration is faster.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carla_client.cli import add_carla_args
from carla_embedded.threads import WORKER_WAIT_ENV, usable_cpus
from control.gates import gate_names
from launch.loop import DriveConfig, load_classifier, open_world, opencv_threads_while_recording, run_episode

STAGES = ("tick", "infer", "control", "overlay", "record", "display")


@dataclass
class BenchConfig:
    drive: DriveConfig
    warmup_frames: int = 20
    record: bool = True
    json_out: str | None = None
    threads: tuple = ("auto",)       # classifier intra-op threads per configuration; "auto": the tuning's choice
    blocks: int | None = None        # alternating blocks per configuration (default: 1 alone, 4 when comparing)

    def __post_init__(self) -> None:
        if self.warmup_frames < 0:
            raise ValueError(f"--warmup-frames must be >= 0, got {self.warmup_frames}")
        self.threads = tuple(parse_threads(t) for t in self.threads)
        if len(set(self.threads)) != len(self.threads):
            raise ValueError(f"--perception-threads {','.join(map(str, self.threads))}: a configuration is repeated")
        if len(self.threads) > 1 and not self.drive.model:
            raise ValueError("--perception-threads compares classifiers: give --model")
        if self.blocks is None:
            self.blocks = 1 if len(self.threads) == 1 else 4
        if self.blocks < 1:
            raise ValueError(f"--blocks {self.blocks}: must be >= 1")
        frames = self.drive.frames
        if frames is not None and frames < self.blocks:
            raise ValueError(f"--frames {frames} is fewer than --blocks {self.blocks}: every block needs a frame")


def parse_threads(value) -> str | int:
    """``"auto"`` or a positive thread count, for ``--perception-threads``."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"--perception-threads {value!r}: want 'auto' or a positive integer")
    return n


def run_bench(cfg: BenchConfig) -> dict:
    """Drive ``cfg.drive.frames`` ticks headless and return ``{"loop_fps", "stages", ...}``.

    With several ``cfg.threads`` configurations, the first one's figures are the top-level ones and
    ``"compare"`` holds every configuration's (see the module docstring).
    """
    d = cfg.drive
    classifiers = {t: load_classifier(d.model, d.backend, d.warmup, None if t == "auto" else t) for t in cfg.threads}
    ctx = open_world(d)
    per_block = None if d.frames is None else d.frames // cfg.blocks
    runs: dict = {t: [] for t in cfg.threads}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.warmup_frames:
            warm = DriveConfig(**{**d.__dict__, "frames": cfg.warmup_frames, "metrics": None,
                                  "record": str(Path(tmp) / "warm.mp4") if cfg.record else None})
            for classifier in classifiers.values():
                run_episode(ctx, warm, classifier)
        for b in range(cfg.blocks):
            order = cfg.threads if b % 2 == 0 else tuple(reversed(cfg.threads))   # nobody always goes first
            for t in order:
                frames = d.frames if per_block is None else per_block + (d.frames % cfg.blocks if b == 0 else 0)
                measured = DriveConfig(**{**d.__dict__, "metrics": None, "frames": frames,
                                          "record": str(Path(tmp) / "bench.mp4") if cfg.record else None})
                runs[t].append(run_episode(ctx, measured, classifiers[t]).metrics)
    results = {t: _combine(runs[t], d, classifiers[t], cfg.record) for t in cfg.threads}
    out = dict(results[cfg.threads[0]])
    if len(cfg.threads) > 1:
        base = [m["loop_fps"] for m in runs[cfg.threads[0]]]
        out["compare"] = [{"threads": t, "loop_fps": r["loop_fps"], "host": r["host"], "stages": r["stages"],
                           "blocks": cfg.blocks,
                           "fps_ratio": float(np.median([m["loop_fps"] / b0 for m, b0 in zip(runs[t], base)]))}
                          for t, r in results.items()]
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(out, indent=2))
    return out


def _combine(blocks: list[dict], d: DriveConfig, classifier, record: bool) -> dict:
    """One configuration's blocks as one run: frames add up, the loop rate is frames over time, each
    stage's mean is frame-weighted and its percentiles are the blocks' median."""
    frames = sum(m["ticks"] for m in blocks)
    seconds = sum(m["ticks"] / m["loop_fps"] for m in blocks)
    stages = {}
    for name in dict.fromkeys(k for m in blocks for k in m["stages"]):
        rows = [m["stages"][name] for m in blocks if name in m["stages"]]
        n = sum(r["count"] for r in rows)
        stages[name] = {"mean_ms": sum(r["mean_ms"] * r["count"] for r in rows) / max(n, 1), "count": n,
                        "p50_ms": float(np.median([r["p50_ms"] for r in rows])),
                        "p99_ms": float(np.median([r["p99_ms"] for r in rows]))}
    return {"loop_fps": frames / seconds, "frames": frames, "res": list(d.res), "gate": d.gate, "model": d.model,
            "backend": getattr(classifier, "backend_name", None), "record": record, "host": _host(classifier, record),
            "stages": stages}


def _host(classifier, record: bool = False) -> str:
    """CPU model, CPUs this process may use, the load at the end (other jobs skew the figures), and
    the thread counts the run had (what users get by default)."""
    import os

    import cv2

    from perception.cpu_tune import cpu_model
    cpus = usable_cpus()
    device = classifier.backend.describe() if classifier is not None else "no classifier"
    load = "load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "load average ?"
    threads = cv2.getNumThreads()
    while_recording = opencv_threads_while_recording(threads) if record else threads
    opencv = f"OpenCV {threads} thread(s)" + (f", {while_recording} while recording" if while_recording != threads else "")
    if os.environ.get(WORKER_WAIT_ENV) == "0":
        opencv += ", idle workers sleep"
    return f"{cpu_model()}; {cpus} CPUs usable, {load}; {opencv}; {device}"


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
    if out.get("compare"):
        first = out["compare"][0]
        lines.append(f"classifier threads compared in {first['blocks']} alternating blocks each, same route start; "
                     f"ratio = median of per-block loop FPS ratios to {first['threads']}:")
        lines.append(f"{'threads':<10}{'loop FPS':>9}{'ratio':>7}{'tick p50':>9}{'infer p50':>10}  classifier")
        for c in out["compare"]:
            st = c["stages"]
            tick, infer = st.get("tick", {}).get("p50_ms", float("nan")), st.get("infer", {}).get("p50_ms", float("nan"))
            device = c["host"].split("; ")[-1]
            lines.append(f"{str(c['threads']):<10}{c['loop_fps']:>9.1f}{c['fps_ratio']:>6.2f}x"
                         f"{tick:>9.2f}{infer:>10.2f}  {device}")
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
    p.add_argument("--perception-threads", default="auto", metavar="LIST",
                   help="classifier intra-op threads, comma list: 'auto' (the tuning's choice) and/or counts; "
                        "several are compared in alternating blocks, the first is the baseline")
    p.add_argument("--blocks", type=int, default=None,
                   help="alternating blocks per configuration (default: 1 alone, 4 when comparing)")
    add_carla_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        drive = DriveConfig(town=args.town, model=args.model, sim=args.sim, host=args.host, port=args.port,
                            timeout=args.timeout, backend=args.backend,
                            gate=args.gate or ("hard" if args.model else "oracle"), frames=args.frames,
                            display=False, realtime=False, seed=args.seed, res=args.res)
        cfg = BenchConfig(drive=drive, warmup_frames=args.warmup_frames, record=args.record, json_out=args.json,
                          threads=tuple(args.perception_threads.split(",")), blocks=args.blocks)
    except ValueError as e:
        p.error(str(e))
    print(format_bench(run_bench(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

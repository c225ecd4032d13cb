"""Latency benchmark of the classifier per backend, preprocessing of a full camera frame included.

Usage::

    python -m perception.bench --model model.onnx --backends torch,onnxruntime --img-size 224 --runs 200 --json b.json
    python -m perception.bench --model best.pt --backends all --runs 500
    python -m perception.bench --model model.onnx --backends onnxruntime --precision auto,fp32

Each backend is loaded through :class:`perception.classifier.CurveClassifier` (so its warm-up is
the product's), warmed up further, then all are timed interleaved (blocks of 10 predictions, the
order reversed every block) on ``--runs`` predictions each of an 800x600 BGRA frame:
p50/p95/p99/max of preprocess, inference and total, FPS (1000 / mean total), device, and the
speed ratio against torch eager measured in the same run (torch eager is always measured).
For an ``.onnx`` whose checkpoint is not at hand, torch eager runs the same architecture with
random weights: eager speed does not depend on weight values, and the output says so.
``--precision`` is ONNX Runtime's: ``auto`` (what users get: provider and precision measured once
per CPU/build/model by :mod:`perception.cpu_tune`, then cached), ``fp32``, ``bf16``, or a comma
list, each timed in the same run; the default ``all`` times auto next to every precision that can
be forced here, and prints auto's decision with every candidate's timing and agreement.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datasets.io_safety import check_img_size, check_output_path, cli_errors, write_json_atomic
from perception.formats import BACKEND_NAMES, format_for_path

log = logging.getLogger(__name__)

STAGES = ("preprocess", "infer", "total")
BLOCK = 10          # predictions per job before the next job runs (interleaving)


@dataclass
class BenchConfig:
    """Attributes: model file; backends (``all`` or names); img_size (None = the model's); runs and
    warmup per backend; json output; frame size (W, H) of the synthetic BGRA frame; frames dir of
    recorded frames to cycle through instead; seed of the drawn frame; onnxruntime precisions
    (each one timed)."""
    model: Path
    backends: tuple[str, ...] | str = "all"
    img_size: int | None = None
    runs: int = 200
    warmup: int = 10
    json: Path | None = None
    frame_size: tuple[int, int] = (800, 600)
    frames: Path | None = None
    seed: int = 0
    precisions: tuple[str, ...] | str = "all"

    def __post_init__(self) -> None:
        from perception.backends.onnxruntime_backend import PRECISION_CHOICES
        self.model = Path(self.model)
        format_for_path(self.model)
        if not self.model.is_file():
            raise ValueError(f"--model {str(self.model)!r}: no such file")
        if isinstance(self.backends, str):
            self.backends = ("all",) if self.backends == "all" else tuple(b.strip() for b in self.backends.split(",")
                                                                          if b.strip())
        bad = [b for b in self.backends if b not in BACKEND_NAMES and b != "all"]
        if bad or not self.backends:
            raise ValueError(f"unknown backend(s) {', '.join(bad) or '(none)'}; valid: all or a comma list of "
                             f"{', '.join(BACKEND_NAMES)}")
        if self.precisions == "all":
            self.precisions = forcible_precisions()
        if isinstance(self.precisions, str):
            self.precisions = tuple(p.strip() for p in self.precisions.split(",") if p.strip())
        bad = [p for p in self.precisions if p not in PRECISION_CHOICES]
        if bad or not self.precisions:
            raise ValueError(f"unknown precision(s) {', '.join(bad) or '(none)'}; valid: a comma list of "
                             f"{', '.join(PRECISION_CHOICES)}")
        if self.runs < 1 or self.warmup < 0:
            raise ValueError(f"need --runs >= 1 and --warmup >= 0, got {self.runs}, {self.warmup}")
        w, h = self.frame_size
        if not (16 <= w <= 8192 and 16 <= h <= 8192):
            raise ValueError(f"--res {w}x{h} out of range; width and height must be in [16, 8192]")
        if self.img_size is not None:
            check_img_size(self.img_size, "--img-size")
        self.json = check_output_path(self.json, "--json")


@dataclass
class BenchRecord:
    """One backend's figures; ``*_ms`` fields are the TOTAL per frame (preprocess + inference)."""
    backend: str
    precision: str
    device: str
    model: str
    img_size: int
    runs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    fps: float
    stages: dict = field(default_factory=dict)        # stage -> {p50, p95, p99, max, mean}
    speedup_vs_torch: float | None = None             # torch eager p50 total / this p50 total
    infer_speedup_vs_torch: float | None = None       # same, inference only
    note: str = ""
    variant: str = ""                                # torch-cuda: 'gpu-pre' (frame graph) or 'cpu-pre'
    breakdown: dict = field(default_factory=dict)     # frame path: EAGER per-stage p50/p99, ms (not the graph)

    @property
    def label(self) -> str:
        if self.variant:
            return f"{self.backend}[{self.variant}]"
        return f"{self.backend} x{self.threads}" if self.threads else self.backend
    decision: str = ""                                # onnxruntime auto: what was chosen and why
    threads: int | None = None                        # onnxruntime: intra-op threads of the session
    agrees: bool | None = None                        # onnxruntime forced: agreed with fp32 in auto's tuning (None: not measured)
    block_infer_ms: list = field(default_factory=list)  # inference p50 of each interleaved block, in order


def forcible_precisions() -> tuple[str, ...]:
    """``auto`` plus every precision ONNX Runtime's default provider can be forced to on this CPU."""
    try:
        from perception.backends.onnxruntime_backend import BF16_CPU_FLAGS, best_providers, cpu_flags
        bf16 = best_providers()[0] == "OpenVINOExecutionProvider" and bool(BF16_CPU_FLAGS & cpu_flags())
    except ImportError:
        bf16 = False
    return ("auto", "fp32", "bf16") if bf16 else ("auto", "fp32")


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def host_description() -> str:
    from perception.backends.onnxruntime_backend import physical_cores
    from perception.cpu_tune import cpu_model
    return f"{cpu_model()}, {physical_cores()} physical cores ({os.cpu_count()} logical)"


def _load(cfg: BenchConfig, name: str, options: dict):
    """(classifier, note) for backend ``name``; torch on an .onnx without checkpoint gets random weights."""
    from perception.classifier import CurveClassifier, read_meta
    try:
        return CurveClassifier.load(cfg.model, backend=name, warmup=cfg.warmup, **options), ""
    except FileNotFoundError:
        if name not in ("torch", "torch-cuda") or format_for_path(cfg.model).arg == "torch":
            raise
    from perception.backends import get_backend_class
    from training.models import create_model, with_tta
    meta = read_meta(cfg.model)
    model = with_tta(create_model(meta.arch, meta.num_classes, meta.dropout, weights="none"), meta.tta)
    clf = CurveClassifier(get_backend_class(name)(model, **options), meta, cfg.model)
    clf.backend.warmup(cfg.warmup, meta.img_size)
    return clf, "RANDOM weights, same architecture (timing only: the ONNX's checkpoint is not here)"


def _bench_frames(cfg: BenchConfig) -> tuple[list[np.ndarray], str]:
    from perception.frames import load_frames, road_frame
    if cfg.frames is not None:
        return load_frames(cfg.frames, 64)
    return [road_frame("curve", np.random.default_rng(cfg.seed), *cfg.frame_size)], "BGRA"


def run_bench(cfg: BenchConfig) -> list[BenchRecord]:
    """Time every requested backend (plus torch eager as the reference). The CLI's one library call."""
    from tqdm import tqdm

    from perception.backends import available_backends, unavailable_reason
    from perception.classifier import read_meta
    meta = read_meta(cfg.model)
    check_img_size(meta.img_size, f"{cfg.model} metadata img_size")
    check_output_path(cfg.json, "--json")
    if cfg.img_size is not None and cfg.img_size != meta.img_size:
        raise ValueError(f"--img-size {cfg.img_size} but {cfg.model} takes {meta.img_size} px inputs; "
                         f"re-export at {cfg.img_size} or pass --img-size {meta.img_size}")
    if "all" in cfg.backends:
        names = available_backends()
    else:
        missing = {b: unavailable_reason(b) for b in cfg.backends if unavailable_reason(b)}
        if missing:
            raise RuntimeError("unavailable backend(s): " + "; ".join(f"{b} ({r})" for b, r in missing.items())
                               + f"; available here: {', '.join(available_backends())}")
        names = list(cfg.backends)
    if "torch" not in names:
        names.append("torch")
    names.sort(key=lambda n: n != "torch")          # reference first
    jobs = [(n, {"precision": p} if n == "onnxruntime" else {}) for n in names
            for p in (cfg.precisions if n == "onnxruntime" else ("",))]
    # torch-cuda twice in the same run: raw frame through one CUDA graph, and the CPU-preprocess path
    jobs = [j for n, o in jobs for j in ([(n, o), (n, {"gpu_preprocess": False})] if n == "torch-cuda" else [(n, o)])]
    frames, order = _bench_frames(cfg)
    loaded = [(name, options, *_load(cfg, name, options)) for name, options in jobs]
    # auto may choose fewer intra-op threads than a forced precision gets (more threads must be
    # THREAD_GAIN faster, perception.cpu_tune): time each forced precision at auto's count too.
    ort = [(o.get("precision") == "auto", c.backend.threads) for n, o, c, _ in loaded if n == "onnxruntime"]
    forced_jobs = [(n, o) for n, o in jobs if n == "onnxruntime" and o.get("precision") != "auto"]
    for threads in sorted({t for auto, t in ort if auto} - {t for auto, t in ort if not auto}):
        for name, options in forced_jobs:
            options = {**options, "threads": threads}
            loaded.append((name, options, *_load(cfg, name, options)))
    times = [{s: [] for s in STAGES} for _ in loaded]
    # Interleaved in blocks of BLOCK predictions, order reversed every block: a busy machine hits every job alike.
    blocks = [(b, min(BLOCK, cfg.runs - b)) for b in range(0, cfg.runs, BLOCK)]
    for k, (start, n) in enumerate(tqdm(blocks, desc="interleaved blocks", leave=False, disable=None)):
        order_ = range(len(loaded)) if k % 2 == 0 else reversed(range(len(loaded)))
        for j in order_:
            clf = loaded[j][2]
            for i in range(start, start + n):
                t = clf.predict(frames[i % len(frames)], color_order=order).timings_ms
                for s in STAGES:
                    times[j][s].append(t[s])
    records: list[BenchRecord] = []
    for (name, options, clf, note), job_times in zip(loaded, times):
        stages = {s: _stats(v) for s, v in job_times.items()}
        total = stages["total"]
        variant, breakdown = "", {}
        if hasattr(clf.backend, "gpu_preprocess"):
            variant = "gpu-pre" if clf.takes_frame(frames[0]) else "cpu-pre"
        if clf.takes_frame(frames[0]):
            runs = [clf.backend.frame_breakdown(frames[i % len(frames)], order, clf.meta)
                    for i in range(min(cfg.runs, 50))]
            breakdown = {k: _stats([r[k] for r in runs]) for k in runs[0]}
        records.append(BenchRecord(
            backend=name, precision=clf.backend.precision, device=clf.backend.describe(), model=str(clf.source), img_size=meta.img_size,
            runs=cfg.runs, p50_ms=total["p50"], p95_ms=total["p95"], p99_ms=total["p99"], max_ms=total["max"],
            mean_ms=total["mean"], fps=1e3 / total["mean"], stages=stages, note=note, variant=variant,
            breakdown=breakdown, threads=getattr(clf.backend, "threads", None),
            block_infer_ms=[float(np.median(job_times["infer"][b:b + n])) for b, n in blocks],
            decision=d.report() if (d := getattr(clf.backend, "decision", None)) is not None else ""))
    _mark_agreement(records, [c for n, _, c, _ in loaded if n == "onnxruntime"])
    ref = records[0]
    for r in records:
        r.speedup_vs_torch = ref.p50_ms / r.p50_ms
        r.infer_speedup_vs_torch = ref.stages["infer"]["p50"] / r.stages["infer"]["p50"]
    if cfg.json is not None:
        write_json_atomic(cfg.json, [{**asdict(r), "label": r.label} for r in records])
    return records


def _mark_agreement(records: list[BenchRecord], classifiers: list) -> None:
    """Set ``agrees`` of each forced ONNX Runtime record from auto's tuning (same provider, precision, threads):
    auto may only be held against precisions that decide like FP32, so the comparison leaves the others out."""
    decisions = [c.backend.decision for c in classifiers if getattr(c.backend, "decision", None) is not None]
    if not decisions:
        return
    d = decisions[0]
    verdict = {(m.candidate.provider, m.candidate.precision, m.candidate.threads or d.key.threads):
               m.agrees(d.min_agreement) for m in d.measurements}
    for r, c in zip([r for r in records if r.backend == "onnxruntime"], classifiers):   # both in load order
        if not r.decision:
            r.agrees = verdict.get((c.backend.providers[0], r.precision, r.threads))


def _block_ratio(a: BenchRecord, b: BenchRecord) -> str:
    """``a``/``b`` inference as the median of per-block ratios: blocks ran back to back, so a slow phase of a
    shared machine cancels out of each ratio, where it can tilt the pooled p50s."""
    pairs = [x / y for x, y in zip(a.block_infer_ms, b.block_infer_ms) if y > 0]
    if len(pairs) < 3:
        return ""
    return f"; median of {len(pairs)} per-block ratios {float(np.median(pairs)):.2f}x"


def format_table(records: list[BenchRecord]) -> str:
    head = (f"{'backend':20s} {'prec':4s} {'pre p50/p99':>12s} {'infer p50/p99':>14s} {'total p50':>9s} {'p95':>6s} "
            f"{'p99':>6s} {'max':>6s} {'FPS':>7s} {'x torch':>8s} {'(infer)':>8s}")
    lines = [head, "-" * len(head)]
    for r in records:
        pre, inf = r.stages["preprocess"], r.stages["infer"]
        lines.append(f"{r.label:20s} {r.precision:4s} {pre['p50']:5.2f}/{pre['p99']:5.2f}  {inf['p50']:6.2f}/{inf['p99']:6.2f}  "
                     f"{r.p50_ms:9.2f} {r.p95_ms:6.2f} {r.p99_ms:6.2f} {r.max_ms:6.2f} {r.fps:7.1f} "
                     f"{r.speedup_vs_torch:7.2f}x {r.infer_speedup_vs_torch:7.2f}x")
    lines.append("ms per frame; total = preprocess (800x600 BGRA -> model input) + inference")
    lines.append("  CPU-preprocess rows: pre = CPU colour/resize/normalise; infer = upload + network + download")
    if any(r.breakdown for r in records):
        lines.append("  gpu-pre rows: pre = staging the raw frame in pinned memory; infer = ONE CUDA graph replay "
                     "(upload, preprocessing, network, logits download) + sync")
    for r in records:
        lines.append(f"  {r.label}: {r.device}" + (f"  [{r.note}]" if r.note else ""))
    for r in records:
        if r.breakdown:
            b = r.breakdown
            lines.append(f"  {r.label} where the time goes (EAGER run of the same ops, timed separately with CUDA "
                         f"events; the graph total above is what a frame costs), p50 ms: "
                         + ", ".join(f"{k} {b[k]['p50']:.3f}" for k in b)
                         + f" = {sum(b[k]['p50'] for k in b):.3f}")
    for r in records:
        if r.decision:
            lines.append(r.decision)
    auto = [r for r in records if r.backend == "onnxruntime" and r.decision]
    forced = [r for r in records if r.backend == "onnxruntime" and not r.decision]
    rejected = [r for r in forced if r.agrees is False]
    forced = [r for r in forced if r.agrees is not False]      # auto is held to precisions that decide like fp32
    if auto and forced:
        a = auto[0]
        same = [r for r in forced if r.threads == a.threads]
        if rejected:
            lines.append("forced precisions left out of the comparison, they disagreed with fp32 in the tuning: "
                         + ", ".join(f"{r.precision} x{r.threads}" for r in rejected))
        for what, pool in ((f"at auto's {a.threads} thread(s)", same), ("at any thread count", forced)):
            if not pool:
                continue
            best = min(pool, key=lambda r: r.stages["infer"]["p50"])
            lines.append(f"auto ({a.precision} x{a.threads}) vs fastest agreeing forced precision {what} "
                         f"({best.precision} x{best.threads}): inference p50 {a.stages['infer']['p50']:.2f} vs "
                         f"{best.stages['infer']['p50']:.2f} ms = {a.stages['infer']['p50'] / best.stages['infer']['p50']:.2f}x"
                         + _block_ratio(a, best))
        if same and min(r.stages["infer"]["p50"] for r in forced) < min(r.stages["infer"]["p50"] for r in same):
            from perception.cpu_tune import THREAD_GAIN
            lines.append(f"  (more threads are chosen only when the tuning finds them >= {100 * THREAD_GAIN:.0f} % faster: "
                         "a margin over the timing noise, as an extra thread costs a core; perception.cpu_tune)")
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark the curve/straight classifier per backend.", add_help=add_help)
    p.add_argument("--model", required=True, type=Path, help="model file: .pt, .onnx or .engine")
    p.add_argument("--backends", default="all",
                   help=f"'all' (every backend usable here) or a comma list of {', '.join(BACKEND_NAMES)} "
                        f"(default: all; torch eager is always added as the reference)")
    p.add_argument("--img-size", type=int, default=None, help="model input size, px (default: the model's)")
    p.add_argument("--runs", type=int, default=200, help="timed predictions per backend (default: 200)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up predictions per backend (default: 10)")
    p.add_argument("--json", type=Path, default=None, help="write the records here as a JSON list")
    p.add_argument("--precision", default="all",
                   help="onnxruntime precision(s): all, or a comma list of auto, fp32, bf16; each is timed (default: "
                        "all = auto, the measured and cached choice users get, next to every precision forcible here)")
    p.add_argument("--res", default="800x600", help="synthetic camera frame size WxH (default: 800x600)")
    p.add_argument("--frames", type=Path, default=None, help="dataset/image dir to cycle instead of a drawn frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn frame (default: 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    res = re.fullmatch(r"(\d+)x(\d+)", args.res.strip().lower())
    if not res:
        parser.error(f"bad --res {args.res!r}; use WxH, e.g. 800x600")
    try:
        cfg = BenchConfig(model=args.model, backends=args.backends, img_size=args.img_size, runs=args.runs,
                          warmup=args.warmup, json=args.json, frame_size=(int(res[1]), int(res[2])),
                          frames=args.frames, seed=args.seed, precisions=args.precision)
    except ValueError as e:
        parser.error(str(e))
    print(f"host: {host_description()}")
    with cli_errors(debug=args.verbose, prog="bench"):
        records = run_bench(cfg)
    print(format_table(records))
    if cfg.json is not None:
        print(f"wrote {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

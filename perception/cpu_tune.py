"""Choose the ONNX Runtime CPU configuration (execution provider, precision, threads) by measurement, and cache it.

Why measure: which one is fastest depends on the CPU, not on its flags. bf16 on the OpenVINO EP
was 1.45x faster than FP32 on a Zen 4 and 1.4x slower on a Xeon with ``avx512_bf16`` but no AMX
(issue 16), so ``precision="auto"`` no longer follows a flag rule.

What is measured, once per (CPU model and ISA flags, ONNX Runtime build, model bytes, thread count):

1. Candidates: every (provider, precision) the installed build offers on this CPU: OpenVINO EP in
   FP32, OpenVINO EP in bf16 (CPUs with native bf16), the plain CPU EP in the ONNX's own precision;
   each with one intra-op thread and with one per physical core (:func:`thread_options`) unless
   the caller or ``$CARLA_PERCEPTION_THREADS`` fixes the count.
2. Agreement: each candidate's class (argmax) on reference frames against the CPU EP in the ONNX's
   own precision (exact FP32 for an FP32 ONNX). A candidate must agree on >= 99.5 % of them, the
   bar of the FP16 ONNX; with fewer than 200 frames that means on every frame.
3. Speed: batch-1 inference, candidates interleaved in blocks of :data:`BLOCK_CALLS` calls for a bounded
   time budget, median. Agreeing candidates within :data:`RUNOFF_MARGIN` of the fastest agreeing one
   are then timed again, only against each other, for the same budget (a runoff): near-ties get the
   samples. EfficientNet-Lite0 at 96 px on the 2-core Xeon: CPU EP and OpenVINO EP, both FP32 x2,
   measured 2.17 vs 2.19, 2.13 vs 2.17 and 2.21 vs 2.23 ms in three full tunings, while a quick one
   (18 calls each) once put them 6 % apart.

The fastest agreeing candidate wins, except that more threads must be at least :data:`THREAD_GAIN`
faster than the fastest with fewer (:func:`choose`): a margin over the timing noise, since an
extra thread costs a core. Candidates are timed in short blocks of consecutive calls (a session
called once per frame, as in the drive), blocks interleaved. Timed one call each in turn, a
two-thread session paid its workers' wake-up on every call and the tuning kept one thread
(OpenVINO x1 2.76 ms, CPU EP x2 2.50 ms) where two ran the closed loop 1.13x faster
(EfficientNet-Lite0 at 96 px, 2-core Xeon, ``launch.bench --perception-threads auto,2``, video
off). The sessions' workers do not spin between calls (``onnxruntime_backend``), so two threads
no longer slow the simulator or the video encoder between frames. The decision is written to
``<cache>/cpu-tune/<key>.json`` (``$CARLA_PERCEPTION_CACHE``, else the user cache dir), like the
TensorRT engine cache; a load with the same key reads it and times nothing. ``perception.export``
and ``python -m perception.tune`` run the full measurement (more frames, longer budget) and
overwrite the entry; a first load without an entry runs a short one (:data:`QUICK`).

A decision measured while other work filled the cores (:func:`host_busy`: runnable threads of other
work counted from ``/proc/loadavg`` before and after the timing) is kept but marked busy, with a
warning, and the first load that finds the host idle measures again and overwrites it. Session 12
saw why: an export measured beside a training run cached OpenVINO x1 at 6.28 ms where x2 runs in
1.34 ms on the idle machine, and every later load used it.

Example::

    from perception.cpu_tune import tune
    decision = tune("m.onnx")
    print(decision.report())
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from perception.formats import default_cache_dir
from perception.meta import ModelMeta, sha256_file

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.995
THREAD_GAIN = 0.05
"""How much faster (fraction of the fewer-thread median) more intra-op threads must be to be chosen."""
BLOCK_CALLS = 3
"""Consecutive timed calls of one candidate before the next one runs (see the module docstring)."""
RUNOFF_MARGIN = 0.15
"""Agreeing candidates this close to the fastest agreeing one (fraction of its median) are timed again."""
BUSY_FRACTION = 0.5
"""The host is busy when other runnable threads number at least this fraction of its logical CPUs."""
CACHE_VERSION = 3           # 2: timed in blocks of consecutive calls; 3: runoff (older decisions are measured again)
OPENVINO, CPU = "OpenVINOExecutionProvider", "CPUExecutionProvider"
_SHORT = {OPENVINO: "OpenVINO EP", CPU: "CPU EP"}


@dataclass(frozen=True)
class Budget:
    """How much measuring a decision gets: reference frames, timing seconds, and timed rounds min/max."""
    frames: int
    seconds: float
    min_rounds: int = 5
    max_rounds: int = 400

    def __post_init__(self) -> None:
        if self.frames < 1 or self.seconds < 0 or self.min_rounds < 1 or self.max_rounds < self.min_rounds:
            raise ValueError(f"bad tuning budget {self}: need frames >= 1, seconds >= 0, 1 <= min_rounds <= max_rounds")


QUICK = Budget(frames=24, seconds=0.25)        # first load without a cached decision
FULL = Budget(frames=200, seconds=1.5)         # perception.export, perception.tune


@dataclass(frozen=True)
class Candidate:
    """One ONNX Runtime session configuration: provider name, the precision it computes in, and its
    intra-op threads (0: the thread count the tuning was called with)."""
    provider: str
    precision: str
    threads: int = 0

    @property
    def label(self) -> str:
        base = f"{_SHORT.get(self.provider, self.provider)} {self.precision}"
        return f"{base} x{self.threads}" if self.threads else base


@dataclass(frozen=True)
class Measurement:
    """One candidate's figures. ``error`` is set (and the rest meaningless) when its session failed to start."""
    candidate: Candidate
    median_ms: float = float("nan")
    rounds: int = 0
    agreement: float = 0.0
    frames: int = 0
    error: str = ""
    runoff: bool = False    # timed again against the other near-ties (its figures include both phases)

    def agrees(self, min_agreement: float = MIN_AGREEMENT) -> bool:
        return not self.error and self.agreement >= min_agreement


@dataclass(frozen=True)
class TuneKey:
    """What a decision is valid for; any field differing means measure again."""
    cpu: str
    runtime: str
    model_sha256: str
    threads: int
    candidates: tuple[str, ...]

    def filename(self) -> str:
        blob = json.dumps([CACHE_VERSION, *asdict(self).values()], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20] + ".json"


@dataclass
class Decision:
    """The chosen candidate, why (every measurement), and whether it came from the cache."""
    chosen: Candidate
    key: TuneKey
    measurements: list[Measurement]
    cached: bool = False
    seconds: float = 0.0
    min_agreement: float = MIN_AGREEMENT
    other_runnable: float | None = None     # most other runnable threads seen while measuring (None: unknown)
    sessions: dict = field(default_factory=dict, repr=False, compare=False)   # candidate -> live session

    @property
    def busy(self) -> bool:
        """Measured on a busy host (:func:`host_busy`): measured again at the first load on an idle one."""
        return host_busy(self.other_runnable)

    def report(self) -> str:
        """Human-readable: the choice, then one line per candidate (median ms, agreement, verdict)."""
        fastest = min((m for m in self.measurements if not m.error), key=lambda m: m.median_ms, default=None)
        threads = (f"up to {self.key.threads} threads (xN: N threads)" if any(m.candidate.threads for m in self.measurements)
                   else f"{self.key.threads} threads")
        busy = (f"; measured on a busy host ({self.other_runnable:g} other runnable threads): measured again "
                f"at the first load on an idle host" if self.busy else "")
        lines = [f"precision auto -> {self.chosen.label} "
                 f"({'cached decision' if self.cached else f'measured in {self.seconds:.2f} s'}; "
                 f"{self.key.cpu}; {self.key.runtime}; {threads}{busy})"]
        for m in self.measurements:
            if m.error:
                lines.append(f"  {m.candidate.label:21s} failed to start: {m.error}")
                continue
            verdict = "CHOSEN" if m.candidate == self.chosen else (
                "rejected: disagrees" if not m.agrees(self.min_agreement) else "slower")
            rel = f" ({m.median_ms / fastest.median_ms:.2f}x fastest)" if fastest else ""
            runoff = " incl. runoff" if m.runoff else ""
            lines.append(f"  {m.candidate.label:21s} {m.median_ms:6.2f} ms median of {m.rounds}{runoff}{rel}, agrees with "
                         f"fp32 on {100 * m.agreement:.2f} % of {m.frames} frames -> {verdict}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"version": CACHE_VERSION, "key": asdict(self.key), "chosen": asdict(self.chosen),
                "min_agreement": self.min_agreement, "seconds": self.seconds,
                "other_runnable": self.other_runnable,
                "measurements": [{**asdict(m), "candidate": asdict(m.candidate)} for m in self.measurements]}

    @classmethod
    def from_json(cls, data: dict) -> "Decision":
        key = TuneKey(**{**data["key"], "candidates": tuple(data["key"]["candidates"])})
        ms = [Measurement(**{**m, "candidate": Candidate(**m["candidate"])}) for m in data["measurements"]]
        return cls(Candidate(**data["chosen"]), key, ms, cached=True, seconds=data.get("seconds", 0.0),
                   min_agreement=data.get("min_agreement", MIN_AGREEMENT), other_runnable=data.get("other_runnable"))


def choose(measurements: list[Measurement], reference: Candidate,
           min_agreement: float = MIN_AGREEMENT, thread_gain: float = THREAD_GAIN) -> Candidate:
    """The fastest candidate agreeing with the reference on >= ``min_agreement`` of frames (else the reference),
    where more threads win only by at least ``thread_gain`` over the best with fewer (see the module doc)."""
    agreeing = [m for m in measurements if m.agrees(min_agreement)]
    if not agreeing:
        return reference
    best = None
    for n in sorted({m.candidate.threads for m in agreeing}):
        fastest = min((m for m in agreeing if m.candidate.threads == n), key=lambda m: m.median_ms)
        if best is None or fastest.median_ms <= (1.0 - thread_gain) * best.median_ms:
            best = fastest
    return best.candidate


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model name", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


ISA_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "vnni", "bf16", "fp16", "asimd", "sve", "i8mm")
"""CPU flags that change which kernels a runtime runs (vector width, int8/bf16/fp16 units)."""


def cpu_identity() -> str:
    """What a cached decision is valid for: the model name plus the instruction-set flags that decide speed.

    A cloud VM's model name is often generic ("Intel(R) Xeon(R) Processor") and stays the same when the
    instance moves to other hardware: this machine had ``amx_bf16`` on some days and not on others,
    which makes bf16 1.4x faster or 1.4x slower than fp32. The flags make such a move measure again.
    """
    from perception.backends.onnxruntime_backend import cpu_flags
    isa = sorted(f for f in cpu_flags() if f.startswith(ISA_FLAG_PREFIXES))
    return f"{cpu_model()} [{' '.join(isa)}]" if isa else cpu_model()


def other_runnable(samples: int = 5, interval_s: float = 0.002) -> float | None:
    """Runnable threads other than the caller right now: the median of a few samples of the running count
    in ``/proc/loadavg`` (the 1-minute load average lags by a minute). None where there is no such file."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)   # "running/total": minus this thread
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(np.median(counts))


def host_busy(runnable: float | None) -> bool:
    """Whether ``runnable`` other threads fill at least :data:`BUSY_FRACTION` of the logical CPUs (unknown: not busy)."""
    return runnable is not None and runnable >= BUSY_FRACTION * (os.cpu_count() or 1)


def runtime_build() -> str:
    """Installed ONNX Runtime distribution and version (the builds share one import name), plus OpenVINO's."""
    from importlib import metadata

    import onnxruntime as ort
    dist = "onnxruntime"
    for name in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime"):
        try:
            if metadata.version(name) == ort.__version__:
                dist = name
                break
        except metadata.PackageNotFoundError:
            continue
    extra = ""
    try:
        extra = f", openvino {metadata.version('openvino')}"
    except metadata.PackageNotFoundError:
        pass
    return f"{dist} {ort.__version__}{extra}"


def cpu_candidates(providers: list[str], model_precision: str, native_bf16: bool,
                   threads: tuple[int, ...] = ()) -> list[Candidate]:
    """Candidates the providers offer; the reference (CPU EP, the ONNX's precision) is always first.

    ``threads``: the thread counts to try, each (provider, precision) with each (the reference with
    the most); empty: no thread count in the candidates (the tuning call's count is used).
    """
    base = [(CPU, model_precision)]
    if OPENVINO in providers:
        base.append((OPENVINO, model_precision))
        if native_bf16 and model_precision == "fp32":
            base.append((OPENVINO, "bf16"))
    if not threads:
        return [Candidate(p, prec) for p, prec in base]
    counts = sorted(set(threads), reverse=True)
    return [Candidate(p, prec, n) for n in counts for p, prec in base]


def thread_options() -> tuple[int, ...]:
    """Thread counts the tuning tries when nobody fixed one: one thread, and one per physical core."""
    from perception.backends.onnxruntime_backend import physical_cores
    return tuple(sorted({1, physical_cores()}))


def default_candidates(providers: list[str], model_precision: str) -> list[Candidate]:
    """What ``precision="auto"`` chooses among here: :func:`cpu_candidates` for this CPU, with the thread
    counts of :func:`thread_options` unless ``$CARLA_PERCEPTION_THREADS`` fixes the count."""
    from perception.backends.onnxruntime_backend import BF16_CPU_FLAGS, cpu_flags, env_threads
    return cpu_candidates(providers, model_precision, bool(BF16_CPU_FLAGS & cpu_flags()),
                          () if env_threads() else thread_options())


def reference_inputs(meta: ModelMeta, n: int, frames: tuple[list[np.ndarray], str] | None = None) -> np.ndarray:
    """``n`` preprocessed reference inputs: the given recorded frames, else deterministic drawn road frames."""
    from datasets.preprocess import preprocess
    from perception.frames import road_frames
    if frames is None:   # drawn at half the camera size: preprocessing brings both to the model's input
        imgs, order = road_frames(n, seed=0, width=400, height=300)[0], "BGRA"
    else:
        imgs, order = frames[0][:n], frames[1]
    return np.concatenate([preprocess(f, meta.img_size, order, meta.mean, meta.std, meta.crop_rows) for f in imgs])


SessionFactory = Callable[[Candidate], object]     # returns something with .infer(x) -> logits


def measure(candidates: list[Candidate], build: SessionFactory, x: np.ndarray, budget: Budget,
            sessions: dict | None = None, clock: Callable[[], float] = time.perf_counter,
            min_agreement: float = MIN_AGREEMENT) -> list[Measurement]:
    """Agreement with ``candidates[0]`` (the reference) on ``x``, then batch-1 timing in interleaved blocks,
    then a runoff of the agreeing near-ties (:data:`RUNOFF_MARGIN`) for the same budget.

    A round runs :data:`BLOCK_CALLS` consecutive calls of every candidate, the order reversed every round.

    Every candidate's session is built by ``build``; one that fails to start is reported with its
    error, not raised. Live sessions are left in ``sessions`` (when given) for reuse.
    """
    live, errors = {}, {}
    for c in candidates:
        try:
            live[c] = build(c)
        except Exception as e:   # noqa: BLE001 - a candidate that cannot start is a measurement, not a crash
            errors[c] = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            log.debug("tuning candidate %s failed to start: %s", c.label, e)
    classes = {c: np.concatenate([s.infer(x[i:i + 1]) for i in range(len(x))]).argmax(1) for c, s in live.items()}
    ref = classes.get(candidates[0])
    agreement = {c: float((classes[c] == ref).mean()) if ref is not None else 0.0 for c in live}
    times: dict[Candidate, list[float]] = {c: [] for c in live}
    _time_rounds(live, times, x, budget, clock)
    medians = {c: float(np.median(t)) for c, t in times.items() if t}
    agreeing = [c for c in medians if Measurement(c, agreement=agreement[c]).agrees(min_agreement)]
    best = min((medians[c] for c in agreeing), default=0.0)
    runoff = [c for c in agreeing if medians[c] <= (1.0 + RUNOFF_MARGIN) * best]
    runoff = runoff if len(runoff) >= 2 else []        # one candidate alone has nothing to be timed against
    if runoff:
        _time_rounds({c: live[c] for c in runoff}, times, x, budget, clock)
    if sessions is not None:
        sessions.update(live)
    out = []
    for c in candidates:
        if c in errors:
            out.append(Measurement(c, error=errors[c]))
            continue
        out.append(Measurement(c, median_ms=1e3 * float(np.median(times[c])), rounds=len(times[c]),
                               agreement=agreement[c], frames=len(x), runoff=c in runoff))
    return out


def _time_rounds(live: dict, times: dict, x: np.ndarray, budget: Budget, clock: Callable[[], float]) -> None:
    """Append batch-1 call times of every session in ``live`` to ``times``: interleaved rounds until the budget is spent."""
    start = clock()
    rounds = 0
    while live and rounds < budget.max_rounds and (rounds < budget.min_rounds or clock() - start < budget.seconds):
        order = list(live) if rounds % 2 == 0 else list(reversed(live))   # no candidate always runs first
        for c in order:
            for k in range(BLOCK_CALLS):
                i = (rounds * BLOCK_CALLS + k) % len(x)
                xi = x[i:i + 1]
                t0 = clock()
                live[c].infer(xi)
                times[c].append(clock() - t0)
        rounds += 1


def cache_path(key: TuneKey, cache_dir: Path | None = None) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "cpu-tune" / key.filename()


def read_cached(key: TuneKey, cache_dir: Path | None = None) -> Decision | None:
    """The cached decision for ``key``, or None (missing, unreadable, or for another key)."""
    path = cache_path(key, cache_dir)
    try:
        decision = Decision.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if decision.key != key:
        log.info("ignoring %s: written for another key", path)
        return None
    return decision


def write_cached(decision: Decision, cache_dir: Path | None = None) -> Path:
    """Write atomically (two processes tuning at once never leave half a file)."""
    path = cache_path(decision.key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(decision.to_json(), indent=2))
    os.replace(tmp, path)
    return path


def tune(path: str | os.PathLike, meta: ModelMeta | None = None, *, candidates: list[Candidate] | None = None,
         threads: int | None = None, budget: Budget = QUICK, force: bool = False, cache_dir: Path | None = None,
         frames: tuple[list[np.ndarray], str] | None = None, build: SessionFactory | None = None,
         measure_fn: Callable[..., list[Measurement]] = measure, keep_sessions: bool = False,
         load_fn: Callable[[], float | None] | None = None) -> Decision:
    """The decision for ONNX ``path`` on this machine: cached, or measured now and cached.

    A cached decision that was measured on a busy host is measured again when the host is idle now.

    Args:
        path: the ONNX file (its bytes are part of the cache key).
        meta: its ModelMeta (read from the file when None).
        candidates: to choose among, reference first (default: :func:`cpu_candidates` for this build/CPU).
        threads: intra-op threads of the candidates that name none (default: the backend's default);
            with candidates that name theirs, the most of them (the cache key's thread count).
        budget: frames and seconds to spend when measuring.
        force: measure even when a cached decision exists (and overwrite it).
        cache_dir: cache root (default ``$CARLA_PERCEPTION_CACHE`` / user cache).
        frames: recorded reference frames ``(frames, colour order)``; default: drawn road frames.
        build: candidate -> session with ``infer`` (default: an ONNX Runtime session per candidate).
        measure_fn: the measuring function (tests inject timings here).
        keep_sessions: keep the live sessions in ``Decision.sessions`` so the caller reuses the winner's.
        load_fn: other runnable threads now (default :func:`other_runnable`; tests inject a host load).
    """
    from perception.backends.onnxruntime_backend import cpu_flags, default_threads, session_for
    path = Path(path)
    if meta is None:
        from perception.meta import read_onnx_meta
        meta = read_onnx_meta(path)
    if candidates is None:
        import onnxruntime as ort
        from perception.backends.onnxruntime_backend import BF16_CPU_FLAGS
        candidates = (default_candidates(ort.get_available_providers(), meta.precision) if threads is None else
                      cpu_candidates(ort.get_available_providers(), meta.precision, bool(BF16_CPU_FLAGS & cpu_flags())))
    threads = threads or max((c.threads for c in candidates), default=0) or default_threads()
    key = TuneKey(cpu=cpu_identity(), runtime=runtime_build(), model_sha256=sha256_file(path), threads=int(threads),
                  candidates=tuple(c.label for c in candidates))
    load_fn = load_fn or other_runnable
    if not force and (cached := read_cached(key, cache_dir)) is not None:
        if not cached.busy or host_busy(load_fn()):     # the host is looked at only for a busy decision
            log.debug("cached CPU decision for %s: %s", path, cached.chosen.label)
            return cached
        log.info("the cached CPU decision for %s (%s) was measured on a busy host; the host is idle now: "
                 "measuring again", path, cached.chosen.label)
    t0 = time.perf_counter()
    before = load_fn()
    if build is None:
        def build(c: Candidate):
            return session_for(path, meta, c.provider, c.precision, c.threads or threads)
    sessions: dict = {}
    x = reference_inputs(meta, budget.frames, frames)
    measurements = measure_fn(candidates, build, x, budget, sessions)
    chosen = choose(measurements, candidates[0])
    loads = [n for n in (before, load_fn()) if n is not None]
    runnable = max(loads) if loads else None
    decision = Decision(chosen, key, measurements, seconds=time.perf_counter() - t0, other_runnable=runnable,
                        sessions=sessions if keep_sessions else {})
    written = write_cached(decision, cache_dir)
    if decision.busy:
        log.warning("the CPU configuration for %s was measured while %g other threads wanted the %d CPUs: the choice "
                    "(%s) may be wrong for an idle host; it is measured again at the first load on an idle host "
                    "(or now: python -m perception.tune --model %s)", path, runnable, os.cpu_count() or 1,
                    chosen.label, path)
    log.info("%s; cached in %s", decision.report().splitlines()[0], written)
    log.debug("%s", decision.report())
    return decision

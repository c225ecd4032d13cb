"""One pacing and timing helper for every fixed-rate loop (drive, evaluate, bench).

Modelled on LeRobot's ``cycle_timer``: call :meth:`CycleTimer.tick` once per cycle, wrap each stage
in ``with timer.section("name"):``, optionally :meth:`CycleTimer.wait` to hold a real-time rate, and
read :meth:`CycleTimer.summary` at the end. The HUD reads rolling percentiles from the same object,
so what the overlay shows and what the metrics file says cannot disagree.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    """Durations of one stage, seconds: every sample (for the run summary) and a rolling window (for the HUD)."""
    window: int = 100
    samples: list[float] = field(default_factory=list)
    recent: deque = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.recent.append(seconds)


def _percentiles_ms(values, qs=(50, 99)) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q}_ms": float("nan") for q in qs}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {f"p{q}_ms": float(np.percentile(arr, q)) for q in qs}


class CycleTimer:
    """Per-stage timing and optional pacing of a loop at ``1/dt`` Hz.

    Args:
        dt: target cycle period, s (the simulation step in synchronous mode).
        window: number of recent cycles used by the rolling statistics the HUD shows.
    """

    def __init__(self, dt: float, window: int = 100) -> None:
        if not dt > 0:
            raise ValueError(f"dt must be > 0 s, got {dt!r}")
        self.dt = float(dt)
        self.window = int(window)
        self.stages: dict[str, StageStats] = {}
        self.cycles: StageStats = StageStats(window)
        self._cycle_start: float | None = None
        self._first_start: float | None = None
        self._last_end: float | None = None

    def tick(self) -> None:
        """Mark the start of a new cycle; the previous cycle's duration is recorded."""
        now = time.perf_counter()
        if self._cycle_start is not None:
            self.cycles.add(now - self._cycle_start)
        else:
            self._first_start = now
        self._cycle_start = now
        self._last_end = now

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the body as one sample of stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.stages.setdefault(name, StageStats(self.window)).add(end - start)
            self._last_end = end

    def add(self, name: str, seconds: float) -> None:
        """Record a duration measured elsewhere (e.g. the classifier's own inference timing)."""
        self.stages.setdefault(name, StageStats(self.window)).add(float(seconds))

    def wait(self) -> float:
        """Sleep until ``dt`` has passed since :meth:`tick`; returns the time slept, s (0 when late)."""
        if self._cycle_start is None:
            return 0.0
        remaining = self._cycle_start + self.dt - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        self._last_end = time.perf_counter()
        return max(0.0, remaining)

    def rolling_fps(self) -> float:
        """Client loop rate over the recent window, Hz (NaN before two cycles)."""
        if not self.cycles.recent:
            return float("nan")
        return 1.0 / max(float(np.mean(self.cycles.recent)), 1e-9)

    def rolling(self, name: str) -> dict[str, float]:
        """Rolling p50/p99 of one stage in ms over the recent window."""
        stats = self.stages.get(name)
        return _percentiles_ms(stats.recent if stats else [])

    def loop_fps(self) -> float:
        """Mean loop rate over the whole run, Hz: cycles / time from the first tick to the end of the last
        section or wait (so the last cycle counts, and a paced loop reads 1/dt)."""
        n = len(self.cycles.samples) + (1 if self._cycle_start is not None else 0)
        if self._first_start is None or self._last_end is None or self._last_end <= self._first_start:
            return float("nan")
        return n / (self._last_end - self._first_start)

    def summary(self) -> dict:
        """Run summary: per stage mean/p50/p99 ms and count, plus loop FPS."""
        stages = {}
        for name, stats in self.stages.items():
            arr = stats.samples
            stages[name] = {"mean_ms": float(np.mean(arr) * 1000.0) if arr else float("nan"),
                            **_percentiles_ms(arr), "count": len(arr)}
        return {"loop_fps": self.loop_fps(), "stages": stages}

    def format_summary(self) -> str:
        """Human-readable table of :meth:`summary` for CLIs."""
        s = self.summary()
        lines = [f"{'stage':<12}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'n':>7}"]
        for name, st in s["stages"].items():
            lines.append(f"{name:<12}{st['mean_ms']:>9.2f}{st['p50_ms']:>9.2f}{st['p99_ms']:>9.2f}{st['count']:>7d}")
        lines.append(f"loop FPS: {s['loop_fps']:.1f}")
        return "\n".join(lines)

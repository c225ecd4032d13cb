"""How many threads the embedded simulator's own work (OpenCV in the renderer) may use.

OpenCV's default pool has one thread per CPU. On a many-core machine that splits an 800x600
frame's warps into stripes too thin to pay for their hand-off, and every thread the renderer
takes is one the caller's inference runtime or video encoder does not get. Two threads are the
default (one where the process may use a single CPU): measured on the 2-core dev machine
(session 9, alternating blocks in one process; `docs/benchmarks.md`), a Town02 800x600 tick
took 0.89x the time of one thread, idle or beside a busy process on the other core, the closed
loop without video ran 1.09-1.13x faster and with video 0.97x (the encoder thread wants the
second core). Images are bit-identical whatever the count (OpenCV splits by rows).

Knob: ``CARLA_EMBEDDED_THREADS=N`` gives OpenCV N threads (1 when several simulators or other
jobs share a small machine, more on a big one running one simulator);
``CARLA_EMBEDDED_THREADS=0`` leaves OpenCV's setting alone (the caller's own
``cv2.setNumThreads`` wins). OpenCV's setting is per process, so it applies to the caller's cv2
calls too.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

ENV = "CARLA_EMBEDDED_THREADS"
DEFAULT_THREADS = 2

WORKER_WAIT_ENV = "OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER"
"""OpenCV's pthreads pool: pause/yield rounds a worker spins after each parallel call before it sleeps
(default 2000). Read once, when OpenCV loads."""


def quiet_opencv_workers() -> bool:
    """Let OpenCV's idle pool workers sleep at once instead of spinning, unless the user set it or cv2 is
    already loaded (then it is too late: False).

    After every render the worker's spin took the second core just when the caller's inference wanted it.
    Measured on the 2-core dev machine (session 9): the simulator alone ticked as fast (3.90 vs 3.76 ms,
    4.04 vs 4.02 ms) on 7-10 % less CPU; the closed loop's paired runs, sleeping / spinning, median 1.02x.
    """
    import sys
    if WORKER_WAIT_ENV in os.environ or "cv2" in sys.modules:
        return False
    os.environ[WORKER_WAIT_ENV] = "0"
    return True


def render_threads() -> int:
    """OpenCV threads the renderer asks for: ``$CARLA_EMBEDDED_THREADS`` (0 = leave alone), else
    :data:`DEFAULT_THREADS` or the CPUs this process may use, whichever is fewer.

    Raises:
        ValueError: the variable is not a non-negative integer.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return min(DEFAULT_THREADS, usable_cpus())
    if not value.isdigit():
        raise ValueError(f"{ENV}={value!r}: want a non-negative integer (OpenCV threads; 0 = leave OpenCV's setting)")
    return int(value)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_render_threads() -> int:
    """Apply :func:`render_threads` to OpenCV; returns OpenCV's thread count afterwards."""
    import cv2

    wanted = render_threads()
    if wanted:
        cv2.setNumThreads(wanted)
    logger.debug("OpenCV threads for rendering: %d (%s=%s)", cv2.getNumThreads(), ENV, os.environ.get(ENV, ""))
    return cv2.getNumThreads()

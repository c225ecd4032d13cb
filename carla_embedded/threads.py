"""How many threads the embedded simulator's own work (OpenCV in the renderer) may use.

OpenCV's default pool has one thread per CPU. On a small machine it fights the caller's other
threads (inference runtime, video encoder, other processes) for the same cores, and each
parallel warp then waits on its slowest stripe: on the 2-core dev machine an 800x600 tick took
11.7 ms unpinned against 5.2 ms pinned to one core (issue 16). The renderer's frame is a few
large whole-array calls that one thread runs at full speed, so the default is one thread.

Knob: ``CARLA_EMBEDDED_THREADS=N`` gives OpenCV N threads (e.g. on a many-core machine running
one simulator); ``CARLA_EMBEDDED_THREADS=0`` leaves OpenCV's setting alone (the caller's own
``cv2.setNumThreads`` wins). OpenCV's setting is per process, so it applies to the caller's cv2
calls too.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

ENV = "CARLA_EMBEDDED_THREADS"
DEFAULT_THREADS = 1


def render_threads() -> int:
    """OpenCV threads the renderer asks for: ``$CARLA_EMBEDDED_THREADS`` (0 = leave alone), else 1.

    Raises:
        ValueError: the variable is not a non-negative integer.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit():
        raise ValueError(f"{ENV}={value!r}: want a non-negative integer (OpenCV threads; 0 = leave OpenCV's setting)")
    return int(value)


def configure_render_threads() -> int:
    """Apply :func:`render_threads` to OpenCV; returns OpenCV's thread count afterwards."""
    import cv2

    wanted = render_threads()
    if wanted:
        cv2.setNumThreads(wanted)
    logger.debug("OpenCV threads for rendering: %d (%s=%s)", cv2.getNumThreads(), ENV, os.environ.get(ENV, ""))
    return cv2.getNumThreads()

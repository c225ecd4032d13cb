"""The closed loop: drive, overlay, record, evaluate, benchmark.

OpenCV's idle pool workers sleep instead of spinning (``carla_embedded.threads.quiet_opencv_workers``
says why): set here, before any module of the loop loads OpenCV, as the embedded simulator does for
programs that import it first; a value the user exported wins.
"""
import os

os.environ.setdefault("OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER", "0")

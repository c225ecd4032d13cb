"""The closed loop: drive, overlay, record, evaluate, benchmark.

OpenCV's idle pool workers sleep instead of spinning (``carla_embedded.threads.quiet_opencv_workers``
says why and when it cannot): applied here, before any module of the loop loads OpenCV, whichever
simulator the loop then drives.
"""
from carla_embedded.threads import quiet_opencv_workers

quiet_opencv_workers()

"""Synchronous world as a context manager, after CARLA's ``examples/synchronous_mode.py`` (CarlaSyncMode).

Entering saves the world's FULL settings, switches to synchronous mode with a fixed time step
and subscribes every sensor to a queue; ``tick()`` advances one frame and returns the world's
frame id plus each sensor's data FOR THAT FRAME (stale data is dropped by frame id, as
CARLA's example does). Leaving restores the saved settings exactly (like CARLA's smoke tests),
on a normal exit, an exception, or a KeyboardInterrupt, so a crashed tool never leaves a shared
server stuck in synchronous mode.

Sensors can be paused (:meth:`CarlaSyncMode.pause`): a paused sensor is not listened to and
``tick`` returns None for it. The collector pauses the camera on ticks whose frame it will
not save, so neither a server nor the embedded simulator ships images nobody reads.
"""
from __future__ import annotations

import logging
import queue

import carla

logger = logging.getLogger(__name__)


class SensorTimeout(RuntimeError):
    """A sensor produced no data for the frame within the timeout."""


def copy_settings(settings: carla.WorldSettings) -> carla.WorldSettings:
    """Independent copy of a WorldSettings (the object is mutable and may be shared)."""
    out = carla.WorldSettings()
    for name in dir(settings):
        if name.startswith("_"):
            continue
        value = getattr(settings, name)
        if callable(value):
            continue
        try:
            setattr(out, name, value)
        except (AttributeError, TypeError):  # read-only or version-specific fields
            pass
    return out


class CarlaSyncMode:
    """``with CarlaSyncMode(world, camera, fps=20) as sync: frame, image = sync.tick(2.0)``.

    Args:
        world: a carla.World.
        *sensors: sensors whose data ``tick`` returns, in this order.
        fps: simulation rate; fixed_delta_seconds = 1 / fps.
        fixed_delta_seconds: overrides ``fps`` when given.
        no_rendering: also set ``no_rendering_mode`` (server-side spectator rendering off).
    """

    def __init__(self, world, *sensors, fps: float = 20.0, fixed_delta_seconds: float | None = None,
                 no_rendering: bool = False):
        self.world = world
        self.sensors = list(sensors)
        self.delta_seconds = float(fixed_delta_seconds) if fixed_delta_seconds else 1.0 / fps
        if not 0 < self.delta_seconds <= 1.0:
            raise ValueError(f"fixed_delta_seconds must be in (0, 1] s, got {self.delta_seconds}")
        self.no_rendering = no_rendering
        self.frame: int | None = None
        self._saved: carla.WorldSettings | None = None
        self._queues: list[queue.Queue] = []
        self._paused: set[int] = set()

    def __enter__(self) -> "CarlaSyncMode":
        self._saved = copy_settings(self.world.get_settings())
        settings = copy_settings(self._saved)
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self.delta_seconds
        if self.no_rendering:
            settings.no_rendering_mode = True
        self.frame = self.world.apply_settings(settings)
        self._queues = [queue.Queue() for _ in self.sensors]
        for i, sensor in enumerate(self.sensors):
            sensor.listen(self._queues[i].put)
        return self

    def pause(self, sensor) -> None:
        """Stop listening to ``sensor``; ``tick`` returns None for it until :meth:`resume`."""
        i = self.sensors.index(sensor)
        if i not in self._paused:
            sensor.stop()
            self._paused.add(i)

    def resume(self, sensor) -> None:
        i = self.sensors.index(sensor)
        if i in self._paused:
            sensor.listen(self._queues[i].put)
            self._paused.discard(i)

    def tick(self, timeout: float = 2.0) -> tuple[int, list]:
        """Advance one frame; returns (frame id, [data per sensor, None for paused sensors]).

        Raises:
            SensorTimeout: a listening sensor delivered nothing for this frame within ``timeout`` s.
        """
        self.frame = self.world.tick()
        data = [None if i in self._paused else self._retrieve(q, i, timeout)
                for i, q in enumerate(self._queues)]
        return self.frame, data

    def _retrieve(self, q: queue.Queue, index: int, timeout: float):
        while True:
            try:
                data = q.get(timeout=timeout)
            except queue.Empty:
                raise SensorTimeout(f"sensor {index} ({getattr(self.sensors[index], 'type_id', '?')}) sent no data "
                                    f"for frame {self.frame} within {timeout} s") from None
            if data.frame == self.frame:
                return data
            if data.frame > self.frame:  # cannot happen in sync mode unless the world was ticked elsewhere
                raise SensorTimeout(f"sensor {index} is ahead: got frame {data.frame}, expected {self.frame}")
            # older frame (e.g. delivered just after resume): drop it

    def __exit__(self, *exc) -> None:
        for i, sensor in enumerate(self.sensors):
            if i not in self._paused:
                try:
                    sensor.stop()
                except RuntimeError as err:  # already destroyed
                    logger.debug("sensor.stop failed: %s", err)
        if self._saved is not None:
            self.world.apply_settings(self._saved)
            logger.debug("world settings restored (synchronous_mode=%s)", self._saved.synchronous_mode)
        return None

"""Vision experts: learned camera policies behind the expert interface (``run_step(obs)``, ``done()``).

A vision expert reads ``obs.image`` (the BGRA camera frame), the speed and the route command at the
car's position (:func:`carla_client.route_command.command_at` on the planned route, the definition
the collector saves frames with) and returns a finite, clipped ``carla.VehicleControl``.

The experts of one drive share a :class:`PolicyGroup`: one :class:`perception.policy_runtime.PolicyRuntime`
holding every expert's network (stacked), run once per frame whatever the number of experts asking,
so the soft gate's two experts cost one batched call. The MoE controller calls every expert on every
tick (:mod:`control.moe`), which with the group costs nothing extra.

Register them with :func:`register_vision_experts`; ``launch.loop.run_episode`` builds the experts
named ``curve`` and ``straight``, so :func:`expert_slots` binds those two slots to vision experts for
the duration of a drive (``launch.study`` uses it).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Iterator, Mapping

import numpy as np

import carla

from carla_client.route_command import DEFAULT_ANTICIPATION_M, command_at, route_options
from control.experts import EXPERTS, Observation, register_expert

log = logging.getLogger(__name__)

VISION_PREFIX = "vision_"
END_MARGIN_M = 2.0
"""The route is done when the car is this close to its end (as ``launch.loop`` decides)."""


def _route_xy(route) -> np.ndarray:
    wps = [item[0] if isinstance(item, tuple) else item for item in route]
    return np.array([(w.transform.location.x, w.transform.location.y) for w in wps], dtype=np.float64)


class PolicyGroup:
    """The policies of one drive on one route: one inference per frame, cached for every expert.

    Args:
        runtime: the stacked policies (``runtime.experts`` names its outputs).
        route: ``[(carla.Waypoint, RoadOption)]``.
        anticipation_m: see :func:`carla_client.route_command.command_at`.
    """

    def __init__(self, runtime, route, anticipation_m: float = DEFAULT_ANTICIPATION_M) -> None:
        self.runtime = runtime
        self.xy = _route_xy(route)
        if len(self.xy) < 2:
            raise ValueError(f"a route needs at least 2 points, got {len(self.xy)}")
        self.s = np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(self.xy, axis=0).T))))
        self.options = route_options(route)
        self.anticipation_m = anticipation_m
        self.index = 0
        self.infer_ms: list[float] = []
        self.commands: list[str] = []
        self._frame: int | None = None
        self._out: np.ndarray | None = None

    def locate(self, x: float, y: float, window: int = 40) -> int:
        """Nearest route point, searched forward from the last one (a route may pass a place twice)."""
        lo, hi = max(0, self.index - 3), min(len(self.xy), self.index + window)
        d2 = np.sum((self.xy[lo:hi] - (x, y)) ** 2, axis=1)
        self.index = lo + int(np.argmin(d2))
        return self.index

    def done(self) -> bool:
        return self.s[-1] - self.s[self.index] <= END_MARGIN_M

    def controls(self, obs: Observation) -> np.ndarray:
        """(E, 3) steer/throttle/brake of every expert for this observation (computed once per frame)."""
        if self._frame == obs.frame and self._out is not None:
            return self._out
        if obs.image is None:
            raise ValueError("vision expert needs obs.image (the BGRA camera frame); got None")
        loc = obs.transform.location
        idx = self.locate(loc.x, loc.y)
        command = command_at(self.options, self.s, idx, self.anticipation_m)
        t0 = time.perf_counter()
        out = self.runtime.predict(obs.image, obs.speed_kmh, command)
        self.infer_ms.append((time.perf_counter() - t0) * 1000.0)
        self.commands.append(command)
        self._frame, self._out = obs.frame, out
        return out


def _clip(v: float, lo: float, hi: float, default: float) -> float:
    v = float(v)
    return min(hi, max(lo, v)) if math.isfinite(v) else default


LONGITUDINAL = ("learned", "cruise")
"""``learned``: throttle and brake from the network (end to end). ``cruise``: steering from the network,
speed held at ``cruise_kmh`` by a proportional controller, which isolates the lateral skill (the
study's deviation metrics) from a weak learned speed control."""


def cruise_control(speed_kmh: float, target_kmh: float, gain: float = 0.15) -> tuple[float, float]:
    """(throttle, brake) holding ``target_kmh``: proportional, full throttle below, gentle brake above."""
    err = target_kmh - speed_kmh
    if err >= 0:
        return min(1.0, 0.3 + gain * err), 0.0
    return 0.0, min(1.0, -gain * err * 0.5) if err < -2.0 else 0.0


class VisionExpert:
    """One output of a :class:`PolicyGroup` as an expert.

    Args:
        longitudinal: see :data:`LONGITUDINAL`. cruise_kmh: the ``cruise`` target speed.
    """

    def __init__(self, name: str, group: PolicyGroup, slot: int, longitudinal: str = "learned",
                 cruise_kmh: float = 20.0) -> None:
        if longitudinal not in LONGITUDINAL:
            raise ValueError(f"unknown longitudinal control {longitudinal!r}; valid: {', '.join(LONGITUDINAL)}")
        self.name = name
        self.group = group
        self.slot = slot
        self.longitudinal = longitudinal
        self.cruise_kmh = float(cruise_kmh)

    def run_step(self, obs: Observation) -> carla.VehicleControl:
        steer, throttle, brake = self.group.controls(obs)[self.slot]
        corrupt = not all(math.isfinite(float(v)) for v in (steer, throttle, brake))
        if corrupt:
            log.warning("expert %s produced a non-finite control; braking", self.name)
            return carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0)
        if self.longitudinal == "cruise":
            throttle, brake = cruise_control(obs.speed_kmh, self.cruise_kmh)
        return carla.VehicleControl(throttle=_clip(throttle, 0.0, 1.0, 0.0), steer=_clip(steer, -1.0, 1.0, 0.0),
                                    brake=_clip(brake, 0.0, 1.0, 1.0))

    def done(self) -> bool:
        return self.group.done()


class VisionExpertSet:
    """Registers one expert per output of ``runtime`` (``vision_<name>``) and builds their shared group.

    The experts of one route share the group built by the first of them (``launch.loop`` creates every
    expert of a drive for the same route object). ``last_group`` keeps the timing of the latest drive.
    """

    def __init__(self, runtime, prefix: str = VISION_PREFIX, anticipation_m: float = DEFAULT_ANTICIPATION_M,
                 longitudinal: str = "learned", cruise_kmh: float = 20.0) -> None:
        if longitudinal not in LONGITUDINAL:
            raise ValueError(f"unknown longitudinal control {longitudinal!r}; valid: {', '.join(LONGITUDINAL)}")
        self.runtime = runtime
        self.prefix = prefix
        self.longitudinal = longitudinal
        self.cruise_kmh = cruise_kmh
        self.anticipation_m = anticipation_m
        self.last_group: PolicyGroup | None = None
        self._route_id: int | None = None
        for slot, name in enumerate(runtime.experts):
            register_expert(prefix + name, self._factory(name, slot))

    @property
    def names(self) -> list[str]:
        return [self.prefix + n for n in self.runtime.experts]

    def group_for(self, route) -> PolicyGroup:
        if self.last_group is None or self._route_id != id(route):
            self.last_group = PolicyGroup(self.runtime, route, self.anticipation_m)
            self._route_id = id(route)
        return self.last_group

    def _factory(self, name: str, slot: int):
        def factory(route, vehicle=None, dt: float = 0.05, **params):
            if params:
                raise ValueError(f"vision expert {self.prefix + name!r} takes no parameters, got {sorted(params)}")
            return VisionExpert(self.prefix + name, self.group_for(route), slot, self.longitudinal, self.cruise_kmh)
        return factory


def register_vision_experts(runtime, prefix: str = VISION_PREFIX, **kw) -> VisionExpertSet:
    """Register ``vision_<name>`` for every expert of ``runtime`` (see :class:`VisionExpertSet`)."""
    return VisionExpertSet(runtime, prefix, **kw)


@contextlib.contextmanager
def expert_slots(binding: Mapping[str, str]) -> Iterator[None]:
    """Temporarily make the expert names in ``binding``'s keys build the experts named by its values,
    e.g. ``{"curve": "vision_curve", "straight": "vision_straight"}``; restored on exit.

    ``launch.loop.run_episode`` builds the ``curve`` and ``straight`` experts by name; this lets a
    drive use vision experts without changing the loop.
    """
    unknown = [v for v in binding.values() if v not in EXPERTS]
    if unknown:
        raise ValueError(f"unknown expert(s) {unknown}; valid: {', '.join(EXPERTS)}")
    saved = {k: EXPERTS.get(k) for k in binding}
    targets = {k: EXPERTS[v] for k, v in binding.items()}
    try:
        EXPERTS.update(targets)
        yield
    finally:
        for k, f in saved.items():
            if f is None:
                EXPERTS.pop(k, None)
            else:
                EXPERTS[k] = f

"""NPC traffic through the Traffic Manager: N vehicles and M walkers, seeded, cleaned up on exit.

The calls are the ones CARLA's ``examples/generate_traffic.py`` makes (``apply_batch_sync`` with
``SpawnActor(...).then(SetAutopilot(FutureActor, True, port))``, walkers plus
``controller.ai.walker``), so the same code fills a real server or the embedded simulator::

    with Traffic(client, world, TrafficConfig(vehicles=30, walkers=10, seed=1), avoid=[ego_spawn.location]):
        for _ in range(1000):
            world.tick()

On exit the walker controllers are stopped first, then every actor it spawned is destroyed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

import carla

logger = logging.getLogger(__name__)

#: CARLA's recommended walker ``speed`` values: [still, walking, running]
_WALK, _RUN = 1, 2


@dataclass(frozen=True)
class TrafficConfig:
    """What to spawn.

    Attributes:
        vehicles: NPC vehicles (>= 0), on the map's spawn points.
        walkers: NPC walkers (>= 0), on the walkers' navigation (sidewalks).
        seed: seeds the spawn choices, the Traffic Manager and the walkers.
        tm_port: Traffic Manager port.
        vehicle_filter, walker_filter: blueprint wildcards.
        four_wheelers_only: only ``base_type == 'car'`` blueprints (generate_traffic's ``--safe``).
        running_walkers: share of walkers that run instead of walking, in [0, 1].
        clearance_m: no NPC vehicle spawns closer than this to an ``avoid`` location.
        leading_distance_m: Traffic Manager's global distance to the vehicle ahead.
    """

    vehicles: int = 0
    walkers: int = 0
    seed: int = 0
    tm_port: int = 8000
    vehicle_filter: str = "vehicle.*"
    walker_filter: str = "walker.pedestrian.*"
    four_wheelers_only: bool = True
    running_walkers: float = 0.0
    clearance_m: float = 15.0
    leading_distance_m: float = 2.5

    def __post_init__(self):
        if self.vehicles < 0 or self.walkers < 0:
            raise ValueError(f"vehicles={self.vehicles} and walkers={self.walkers} must be >= 0")
        if not 0.0 <= self.running_walkers <= 1.0:
            raise ValueError(f"running_walkers={self.running_walkers} must be in [0, 1]")
        if self.clearance_m < 0 or self.leading_distance_m < 0:
            raise ValueError(f"clearance_m={self.clearance_m} and leading_distance_m={self.leading_distance_m} "
                             f"must be >= 0 m")


class Traffic:
    """Context manager: spawns the NPCs on enter, destroys them on exit (see the module docstring).

    Args:
        client: ``carla.Client`` (or the embedded one).
        world: its current world.
        config: what to spawn.
        avoid: locations (e.g. the ego's spawn point) no NPC vehicle may spawn near.
    """

    def __init__(self, client, world, config: TrafficConfig, avoid=()):
        self.client, self.world, self.config = client, world, config
        self.avoid = [carla.Location(a.x, a.y, a.z) for a in avoid]
        self.vehicle_ids: list[int] = []
        self.walker_ids: list[int] = []
        self.controller_ids: list[int] = []
        self.traffic_manager = None

    def __enter__(self) -> "Traffic":
        try:
            self.spawn()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- spawning ----------------------------------------------------------------------------
    def spawn(self) -> None:
        config = self.config
        rng = np.random.default_rng(config.seed)
        synchronous = self.world.get_settings().synchronous_mode
        tm = self.client.get_trafficmanager(config.tm_port)
        tm.set_random_device_seed(config.seed)
        tm.set_synchronous_mode(synchronous)
        tm.set_global_distance_to_leading_vehicle(config.leading_distance_m)
        self.traffic_manager = tm
        if config.vehicles:
            self._spawn_vehicles(rng, synchronous)
        if config.walkers:
            self._spawn_walkers(rng, synchronous)
        logger.info("traffic: %d vehicles, %d walkers", len(self.vehicle_ids), len(self.walker_ids))

    def _blueprints(self, pattern: str) -> list:
        found = sorted(self.world.get_blueprint_library().filter(pattern), key=lambda bp: bp.id)
        if not found:
            raise ValueError(f"no blueprint matches {pattern!r}")
        return found

    def _spawn_vehicles(self, rng: np.random.Generator, synchronous: bool) -> None:
        config = self.config
        blueprints = self._blueprints(config.vehicle_filter)
        if config.four_wheelers_only:
            blueprints = [bp for bp in blueprints if bp.has_attribute("base_type")
                          and bp.get_attribute("base_type").as_str() == "car"] or blueprints
        points = [p for p in self.world.get_map().get_spawn_points()
                  if all(p.location.distance(a) >= config.clearance_m for a in self.avoid)]
        order = rng.permutation(len(points))
        SpawnActor, SetAutopilot, FutureActor = (carla.command.SpawnActor, carla.command.SetAutopilot,
                                                 carla.command.FutureActor)
        batch = []
        for index in order[:config.vehicles]:
            bp = blueprints[int(rng.integers(len(blueprints)))]
            if bp.has_attribute("color"):
                colors = bp.get_attribute("color").recommended_values
                bp.set_attribute("color", colors[int(rng.integers(len(colors)))])
            bp.set_attribute("role_name", "autopilot")
            batch.append(SpawnActor(bp, points[int(index)]).then(SetAutopilot(FutureActor, True, config.tm_port)))
        for response in self.client.apply_batch_sync(batch, synchronous):
            if response.error:
                logger.warning("traffic: vehicle not spawned: %s", response.error)
            else:
                self.vehicle_ids.append(response.actor_id)
        if len(self.vehicle_ids) < config.vehicles:
            logger.warning("traffic: %d of %d vehicles spawned (%d free spawn points)", len(self.vehicle_ids),
                           config.vehicles, len(points))

    def _spawn_walkers(self, rng: np.random.Generator, synchronous: bool) -> None:
        config = self.config
        world = self.world
        blueprints = self._blueprints(config.walker_filter)
        world.set_pedestrians_seed(config.seed)
        SpawnActor = carla.command.SpawnActor
        batch, speeds = [], []
        for _ in range(config.walkers):
            location = world.get_random_location_from_navigation()
            if location is None:
                continue
            bp = blueprints[int(rng.integers(len(blueprints)))]
            if bp.has_attribute("is_invincible"):
                bp.set_attribute("is_invincible", "false")
            speed = 1.4
            if bp.has_attribute("speed"):
                values = bp.get_attribute("speed").recommended_values
                speed = float(values[_RUN if rng.random() < config.running_walkers else _WALK])
            batch.append(SpawnActor(bp, carla.Transform(location)))
            speeds.append(speed)
        spawned = []
        for response, speed in zip(self.client.apply_batch_sync(batch, True), speeds):
            if response.error:
                logger.warning("traffic: walker not spawned: %s", response.error)
            else:
                spawned.append((response.actor_id, speed))
        controller_bp = world.get_blueprint_library().find("controller.ai.walker")
        responses = self.client.apply_batch_sync(
            [SpawnActor(controller_bp, carla.Transform(), walker_id) for walker_id, _ in spawned], True)
        pairs = []
        for response, (walker_id, speed) in zip(responses, spawned):
            self.walker_ids.append(walker_id)
            if response.error:
                logger.warning("traffic: walker controller not spawned: %s", response.error)
            else:
                self.controller_ids.append(response.actor_id)
                pairs.append((response.actor_id, speed))
        if synchronous:
            world.tick()
        else:
            world.wait_for_tick()
        world.set_pedestrians_cross_factor(0.0)
        for controller_id, speed in pairs:
            controller = world.get_actor(controller_id)
            controller.start()
            controller.go_to_location(world.get_random_location_from_navigation())
            controller.set_max_speed(speed)

    # -- clean-up ----------------------------------------------------------------------------
    def destroy(self) -> None:
        """Stop the walker controllers, then destroy controllers, walkers and vehicles (idempotent)."""
        for controller_id in self.controller_ids:
            controller = self.world.get_actor(controller_id)
            if controller is not None and controller.is_alive:
                controller.stop()
        ids = self.controller_ids + self.walker_ids + self.vehicle_ids
        if ids:
            self.client.apply_batch_sync([carla.command.DestroyActor(i) for i in ids], False)
        self.controller_ids, self.walker_ids, self.vehicle_ids = [], [], []

    @property
    def actor_ids(self) -> list[int]:
        return self.vehicle_ids + self.walker_ids + self.controller_ids

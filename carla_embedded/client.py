"""``carla.Client`` for the embedded simulator: same methods, same argument order."""
from __future__ import annotations

import itertools
import logging

import carla

from . import towns
from .errors import CarlaSurface, UnsupportedFeatureError
from .world import EmbeddedMap, World

logger = logging.getLogger(__name__)

#: carla API version this simulator implements; reported as "<version>-embedded".
API_VERSION = "0.9.16"
VERSION = f"{API_VERSION}-embedded"
DEFAULT_TOWN = "Embedded01"          # needs no file, so get_world() works on any machine
MAP_NAME_PREFIX = "Carla/Maps/"      # carla.Map.name on a CARLA server reads "Carla/Maps/Town02"


class _Response:
    """carla.command.Response: the outcome of one batch command."""

    def __init__(self, actor_id: int, error: str = ""):
        self.actor_id = actor_id
        self.error = error

    def has_error(self) -> bool:
        return bool(self.error)

    def __repr__(self):
        return f"Response(actor_id={self.actor_id}, error={self.error!r})"


class Client(CarlaSurface):
    """A CARLA client whose "server" is in-process.

    Args:
        host, port, worker_threads: accepted for carla.Client compatibility and ignored.
        seed: seed of the scenery the renderer places (buildings, trees): same seed, same town look.

    Example:
        >>> client = Client("127.0.0.1", 2000)
        >>> world = client.load_world("Town02")
    """

    _carla_class = carla.Client

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0, *, seed: int = 0):
        self.host, self.port = host, port
        self._timeout = 10.0
        self._seed = int(seed)
        self._world: World | None = None
        self._episode_ids = itertools.count(1)

    def __repr__(self):
        return f"carla_embedded.Client(version={VERSION})"

    def set_timeout(self, seconds: float) -> None:
        """Kept for compatibility: nothing here waits on a network."""
        if not seconds > 0:
            raise ValueError(f"timeout={seconds!r} must be > 0 seconds")
        self._timeout = float(seconds)

    def get_client_version(self) -> str:
        return VERSION

    def get_server_version(self) -> str:
        return VERSION

    # -- worlds ----------------------------------------------------------------------------
    def get_world(self) -> World:
        """The current world (the built-in ``Embedded01`` town until ``load_world`` is called)."""
        if self._world is None:
            self._world = self._make_world(DEFAULT_TOWN, reset_settings=True)
        return self._world

    def get_available_maps(self) -> list[str]:
        """Maps loadable without network, as carla names them: ``/Game/Carla/Maps/Town02``...

        A CARLA town whose file is missing is still loadable when its download works.
        """
        return towns.available_maps()

    def load_world(self, map_name: str, reset_settings: bool = True, map_layers=carla.MapLayer.All) -> World:
        """Replace the world by a fresh one on ``map_name`` (``Town02`` or ``/Game/Carla/Maps/Town02``).

        The old world's actors are destroyed. ``reset_settings=False`` keeps the old world's settings.

        Raises:
            UnknownTownError, TownNotFoundError: see ``towns.load_opendrive``.
            UnsupportedFeatureError: ``map_layers`` other than ``MapLayer.All``.
        """
        if map_layers != carla.MapLayer.All:
            raise UnsupportedFeatureError(f"map_layers={map_layers} (only carla.MapLayer.All)")
        return self._replace_world(self._make_world(map_name, reset_settings))

    def load_world_if_different(self, map_name: str, reset_settings: bool = True,
                                map_layers=carla.MapLayer.All) -> World | None:
        current = self.get_world().get_map().name.rsplit("/", 1)[-1]
        if towns.canonical_town(map_name) == towns.canonical_town(current):
            return None
        return self.load_world(map_name, reset_settings, map_layers)

    def reload_world(self, reset_settings: bool = True) -> World:
        """A fresh world on the current map (actors destroyed)."""
        return self._replace_world(self._make_world(self.get_world().get_map().name.rsplit("/", 1)[-1],
                                                    reset_settings))

    def generate_opendrive_world(self, opendrive: str, parameters=None, reset_settings: bool = True) -> World:
        """A world on any OpenDRIVE text (CARLA builds meshes from ``parameters``; here they are unused)."""
        carla_map = EmbeddedMap(MAP_NAME_PREFIX + "OpenDriveMap", opendrive)
        return self._replace_world(World(carla_map, self._kept_settings(reset_settings), self._seed,
                                         next(self._episode_ids)))

    def get_trafficmanager(self, port: int = 8000):
        raise UnsupportedFeatureError("the traffic manager (autopilot, NPC traffic)")

    def _kept_settings(self, reset_settings: bool):
        return None if reset_settings or self._world is None else self._world.get_settings()

    def _make_world(self, map_name: str, reset_settings: bool) -> World:
        town, opendrive = towns.load_opendrive(map_name)
        logger.info("embedded simulator: loading %s", town)
        return World(EmbeddedMap(MAP_NAME_PREFIX + town, opendrive), self._kept_settings(reset_settings), self._seed,
                     next(self._episode_ids))

    def _replace_world(self, world: World) -> World:
        if self._world is not None:
            self._world._shutdown()
        self._world = world
        return world

    # -- batches ---------------------------------------------------------------------------
    def apply_batch(self, commands, do_tick: bool = False) -> None:
        self.apply_batch_sync(commands, do_tick)

    def apply_batch_sync(self, commands, do_tick: bool = False) -> list:
        """Run ``carla.command`` DestroyActor / ApplyVehicleControl / ApplyTransform /
        ApplyTargetVelocity commands in order; one Response per command (``tick()`` after if asked)."""
        responses = self._run_batch(commands)
        if do_tick:
            self.get_world().tick()
        return responses

    def _run_batch(self, commands) -> list:
        world = self.get_world()
        handlers = {
            carla.command.DestroyActor: lambda actor, cmd: actor.destroy(),
            carla.command.ApplyVehicleControl: lambda actor, cmd: actor.apply_control(cmd.control),
            carla.command.ApplyTransform: lambda actor, cmd: actor.set_transform(cmd.transform),
            carla.command.ApplyTargetVelocity: lambda actor, cmd: actor.set_target_velocity(cmd.velocity),
        }
        responses = []
        for command in commands:
            handler = handlers.get(type(command))
            if handler is None:
                raise UnsupportedFeatureError(f"batch command {type(command).__name__}",
                                              f"supported: {', '.join(c.__name__ for c in handlers)}")
            actor = world.get_actor(command.actor_id)
            if actor is None:
                responses.append(_Response(command.actor_id, f"actor {command.actor_id} not found"))
                continue
            handler(actor, command)
            responses.append(_Response(command.actor_id))
        return responses

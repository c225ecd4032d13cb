"""``carla.Client`` for the embedded simulator: same methods, same argument order."""
from __future__ import annotations

import itertools
import logging

import carla

from . import commands, towns
from .commands import Response
from .errors import CarlaSurface, UnsupportedAttributeError, UnsupportedFeatureError
from .world import EmbeddedMap, World

logger = logging.getLogger(__name__)

#: carla API version this simulator implements; reported as "<version>-embedded".
API_VERSION = "0.9.16"
VERSION = f"{API_VERSION}-embedded"
DEFAULT_TOWN = "Embedded01"          # needs no file, so get_world() works on any machine
MAP_NAME_PREFIX = "Carla/Maps/"      # carla.Map.name on a CARLA server reads "Carla/Maps/Town02"


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
        self._traffic_managers: dict = {}
        commands.install()           # carla.command.* accept embedded blueprints and actors from now on

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
        """The Traffic Manager on ``port`` (created on first use, as in CARLA)."""
        from .traffic_manager import get_traffic_manager
        return get_traffic_manager(self, int(port))

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
        """Run ``carla.command`` commands in order; one ``Response`` per command (``tick()`` after if asked).

        Supported: SpawnActor (with ``.then(...)`` and ``FutureActor``), DestroyActor, SetAutopilot,
        ApplyVehicleControl, ApplyWalkerControl, ApplyTransform, ApplyTargetVelocity,
        SetSimulatePhysics, SetVehicleLightState, built from embedded or plain (id) arguments.

        Raises:
            UnsupportedFeatureError: any other command type.
        """
        world = self.get_world()
        responses = [self._run_command(world, command) for command in commands]
        if do_tick:
            world.tick()
        return responses

    _ACTOR_COMMANDS = {
        "DestroyActor": lambda actor, cmd: actor.destroy(),
        "ApplyVehicleControl": lambda actor, cmd: actor.apply_control(cmd.control),
        "ApplyWalkerControl": lambda actor, cmd: actor.apply_control(cmd.control),
        "ApplyTransform": lambda actor, cmd: actor.set_transform(cmd.transform),
        "ApplyTargetVelocity": lambda actor, cmd: actor.set_target_velocity(cmd.velocity),
        "SetAutopilot": lambda actor, cmd: actor.set_autopilot(cmd.enabled, cmd.tm_port),
        "SetSimulatePhysics": lambda actor, cmd: actor.set_simulate_physics(cmd.enabled),
        "SetVehicleLightState": lambda actor, cmd: actor.set_light_state(cmd.light_state),
    }

    def _run_command(self, world, command, future_id: int = 0) -> Response:
        name = type(command).__name__
        if name == "SpawnActor":
            if not hasattr(command, "blueprint"):
                raise UnsupportedFeatureError("a SpawnActor built from a real carla blueprint",
                                              "use world.get_blueprint_library() of the embedded world")
            parent = None
            if command.parent_id:
                parent = world.get_actor(future_id if command.parent_id == carla.command.FutureActor
                                         else command.parent_id)
                if parent is None:
                    return Response(0, f"parent actor {command.parent_id} not found")
            try:
                actor = world.spawn_actor(command.blueprint, command.transform, attach_to=parent)
            except UnsupportedFeatureError:
                raise
            except (RuntimeError, ValueError) as exc:
                return Response(0, str(exc))
            for after in command.do_after:
                response = self._run_command(world, after, actor.id)
                if response.error:
                    return Response(actor.id, response.error)
            return Response(actor.id)
        handler = self._ACTOR_COMMANDS.get(name)
        if handler is None:
            raise UnsupportedFeatureError(f"batch command {name}",
                                          f"supported: SpawnActor, {', '.join(self._ACTOR_COMMANDS)}")
        actor_id = command.actor_id
        if actor_id == carla.command.FutureActor and future_id:
            actor_id = future_id
        actor = world.get_actor(actor_id)
        if actor is None or not actor.is_alive:
            return Response(actor_id, f"actor {actor_id} not found")
        try:
            handler(actor, command)
        except UnsupportedAttributeError:
            return Response(actor_id, f"{name}: actor {actor_id} is a {actor.type_id}")
        except UnsupportedFeatureError:
            raise
        except (RuntimeError, ValueError, AttributeError) as exc:
            return Response(actor_id, f"{name}: {exc}")
        return Response(actor_id)

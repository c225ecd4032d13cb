"""carla_embedded: an in-process simulator speaking the carla client API, on CARLA's real towns.

Code written against ``carla`` runs unchanged on it; only the client object differs::

    import carla
    import carla_embedded

    client = carla_embedded.Client("127.0.0.1", 2000)        # instead of carla.Client(...)
    world = client.load_world("Town02")                      # real carla.Map from Town02.xodr
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    bl = world.get_blueprint_library()
    car = world.spawn_actor(bl.filter("vehicle.*")[0], world.get_map().get_spawn_points()[0])
    cam = world.spawn_actor(bl.find("sensor.camera.rgb"), carla.Transform(carla.Location(x=1.5, z=2.0)), attach_to=car)
    cam.listen(lambda image: image.save_to_disk("out/%06d.png"))
    car.apply_control(carla.VehicleControl(throttle=0.5)); frame = world.tick()

Towns: Town01-Town05 (OpenDRIVE files found via ``$CARLA_MAPS_DIR``, ``$CARLA_ROOT``, the
user cache or a pinned download; see ``towns``), any other ``<name>.xodr`` in those folders, and
the file-free procedural ``Embedded01``.

Traffic as in CARLA: ``client.get_trafficmanager(port)``, ``vehicle.set_autopilot(True, port)``,
traffic lights at junctions, walkers with ``controller.ai.walker``, and ``client.apply_batch_sync``
with ``carla.command.SpawnActor(...).then(SetAutopilot(FutureActor, True, port))``.
Sensors (``sensors.py``): RGB, depth and semantic cameras, collision, obstacle, GNSS, IMU, lane
invasion, lidar and radar, all over the same scene, other actors included.
What the simulator does not implement raises ``UnsupportedFeatureError`` saying so.
A CARLA program, unchanged: ``python -m carla_embedded.run PythonAPI/examples/manual_control.py``.
Benchmarks: ``python -m carla_embedded.bench``, ``python -m carla_embedded.bench_sensors``,
``python -m carla_embedded.bench_async``.
"""
from .threads import quiet_opencv_workers

quiet_opencv_workers()            # before anything below loads OpenCV (see threads.py)

from .actors import ActorList, Image, LaneInvasionEvent
from .blueprints import ActorAttribute, ActorBlueprint, BlueprintLibrary
from .client import VERSION, Client
from .errors import TownNotFoundError, UnknownTownError, UnsupportedAttributeError, UnsupportedFeatureError
from .traffic_lights import TrafficLight
from .traffic_manager import TrafficManager
from .walkers import Walker, WalkerAIController
from .vehicle import VehicleParams, VehicleState, step
from .world import EmbeddedMap, World, WorldSnapshot

__all__ = [
    "ActorAttribute", "ActorBlueprint", "ActorList", "BlueprintLibrary", "Client", "EmbeddedMap", "Image",
    "LaneInvasionEvent", "TownNotFoundError", "UnknownTownError", "UnsupportedAttributeError",
    "UnsupportedFeatureError", "VERSION", "VehicleParams", "VehicleState", "World", "WorldSnapshot", "step",
    "TrafficLight", "TrafficManager", "Walker", "WalkerAIController",
]

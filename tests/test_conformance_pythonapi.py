"""CARLA 0.9.14's own PythonAPI programs and agents, unchanged, on the embedded simulator.

The programs in ``<repo>/../shared/carla_pythonapi/examples`` run in a subprocess through
``tests/pythonapi_runner.py``: only ``carla.Client`` is resolved to ``carla_embedded.Client``,
pygame is headless, and after a bounded number of frames the runner presses "Ctrl-C" so the
program runs its own clean-up. The agents (``BasicAgent``, ``BehaviorAgent``) drive in-process.
Every listed program runs: the ones that need collision, depth, GNSS, IMU and semantic cameras
use ``carla_embedded.sensors``.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import carla
from carla_embedded import Client

PYTHONAPI = Path(__file__).resolve().parents[2] / "shared" / "carla_pythonapi"
RUNNER = Path(__file__).resolve().parent / "pythonapi_runner.py"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (PYTHONAPI / "examples").is_dir(),
                                reason=f"CARLA's PythonAPI programs are not at {PYTHONAPI} (<repo>/../shared)")


def run_program(name: str, tmp_path: Path, max_frames: int, *args: str, timeout: float = 240.0):
    """(completed process, report dict) of one example program run in ``tmp_path``."""
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(RUNNER), str(PYTHONAPI / "examples" / name), str(report),
                           str(max_frames), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc, json.loads(report.read_text())


def moved(report, prefix: str, metres: float) -> tuple[int, int]:
    actors = [a for a in report["actors"].values() if a["type"].startswith(prefix)]
    return sum(a["moved"] > metres for a in actors), len(actors)


@pytest.mark.parametrize("mode", [[], ["--asynch"]], ids=["defaults", "asynch"])
def test_generate_traffic_with_its_defaults(tmp_path, mode):
    proc, report = run_program("generate_traffic.py", tmp_path, 200, *mode)
    spawned = re.search(r"spawned (\d+) vehicles and (\d+) walkers", proc.stdout)
    assert spawned and "done." in proc.stdout, proc.stdout
    # its seed is the clock: a long bus on a spawn point 8 m from another fails as on a server (logged)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert all("collision at spawn position" in line for line in errors), errors
    n_cars, n_walkers = int(spawned.group(1)), int(spawned.group(2))
    assert n_cars >= 27 and n_walkers == 10
    cars, seen_cars = moved(report, "vehicle.", 5.0)
    walkers, seen_walkers = moved(report, "walker.", 2.0)
    assert seen_cars == n_cars and cars >= n_cars - 3, report
    assert seen_walkers == 10 and walkers >= 8, report
    assert report["alive_at_exit"] == []                      # its own clean-up destroyed everything


def test_dynamic_weather(tmp_path):
    proc, report = run_program("dynamic_weather.py", tmp_path, 60)
    suns = re.findall(r"Sun\(alt: [-\d.]+, azm: [-\d.]+\)", proc.stdout)
    assert report["frames"] == 60 and len(set(suns)) >= 10    # the weather kept changing, frame by frame


def test_tutorial_saves_images(tmp_path):
    proc, _ = run_program("tutorial.py", tmp_path, 10 ** 6)
    assert "destroying actors" in proc.stdout
    assert len(list((tmp_path / "_out").glob("*.png"))) >= 20  # 5 s of asynchronous world at 20 Hz


@pytest.mark.parametrize("agent, mode", [("Basic", ["--sync"]), ("Behavior", ["--sync"]), ("Basic", [])],
                         ids=["Basic-sync", "Behavior-sync", "Basic-async"])
def test_automatic_control_reaches_its_destination(tmp_path, agent, mode):
    proc, _ = run_program("automatic_control.py", tmp_path, 4000, *mode, "--agent", agent, "--seed", "1",
                          timeout=400)
    assert "The target has been reached, stopping the simulation" in proc.stdout


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_manual_control_headless(tmp_path, sync):
    run_program("manual_control.py", tmp_path, 100, *(["--sync"] if sync else []))


# -- CARLA's agents ------------------------------------------------------------------------------
def _lights_on_lane(world, waypoint):
    for light in world.get_actors().filter("*traffic_light*"):
        for stop in light.get_stop_waypoints():
            if (stop.road_id, stop.lane_id) == (waypoint.road_id, waypoint.lane_id):
                yield light, stop


@pytest.mark.parametrize("town, agent_name, start, end", [
    ("Town02", "Basic", 0, 40), ("Town02", "Behavior", 0, 40),
    ("Town03", "Basic", 0, 60), ("Town03", "Behavior", 5, 120)])
def test_agents_drive_to_their_destination_and_stop_at_red(monkeypatch, town, agent_name, start, end):
    """The first light on the route is turned red and frozen as the car nears it: the agent must
    stop before its stop line; then it turns green and the agent must finish the route."""
    monkeypatch.syspath_prepend(str(PYTHONAPI))
    from agents.navigation.basic_agent import BasicAgent
    from agents.navigation.behavior_agent import BehaviorAgent

    world = Client().load_world(town)
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    points = world.get_map().get_spawn_points()
    destination = points[end].location
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.lincoln.mkz_2020"), points[start])
    agent = BasicAgent(ego, 30) if agent_name == "Basic" else BehaviorAgent(ego, behavior="normal")
    agent.set_destination(destination)
    red, stopped_ticks, stop_distance = None, 0, None
    for _ in range(4000):
        if agent.done():
            break
        wp = world.get_map().get_waypoint(ego.get_location())
        if red is None:
            for light, stop in _lights_on_lane(world, wp):
                if 10.0 < abs(stop.s - wp.s) < 40.0:
                    red = light
                    light.set_state(carla.TrafficLightState.Red)
                    light.freeze(True)
        elif red.is_frozen() and ego.get_velocity().length() < 0.05:
            stopped_ticks += 1
            if stopped_ticks == 40:                      # 2 s at a standstill at the red light
                stop_distance = min(ego.get_location().distance(s.transform.location) for s in red.get_stop_waypoints())
                assert not wp.is_junction and ego.is_at_traffic_light()
                red.set_state(carla.TrafficLightState.Green)
                red.freeze(False)
        ego.apply_control(agent.run_step())
        world.tick()
    assert red is not None and stop_distance is not None, "the agent never stopped at the red light"
    assert 2.4 < stop_distance < 20.0                   # front before the line, not far back
    assert agent.done() and ego.get_location().distance(destination) < 6.0

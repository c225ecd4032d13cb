"""How fast an asynchronous embedded world runs beside a busy user thread.

Usage::

    python -m carla_embedded.bench_async                    # Town02, 1280x720 camera, 5 s per case
    python -m carla_embedded.bench_async --res 800x600 --seconds 10

In asynchronous mode the world's clock is a thread of the user's process, so a user thread that
keeps the GIL slows it; a CARLA server is another process and does not care. Each case runs the
user's main thread in one way for ``--seconds`` and prints the world's steps per second against
its schedule (20 Hz at the default 0.05 s step):

- ``idle``: the main thread sleeps (what the world gets by itself);
- ``busy``: it spins in Python and never looks at the world;
- ``busy, looking``: it spins in Python and reads the car's transform and a snapshot once per
  16 ms, as a program's loop does (the world then keeps its pace, ``World._keep_pace``);
- ``pygame busy loop, looking``: ``pygame.time.Clock.tick_busy_loop(60)``, as CARLA's
  ``manual_control.py`` (when pygame is installed).
"""
from __future__ import annotations

import argparse
import os
import time

import carla

from .bench import _listening_camera, cpu_model, parse_resolution
from .client import Client
from .errors import TownNotFoundError

CASES = ("idle", "busy", "busy, looking", "pygame busy loop, looking")


def spin(seconds: float) -> None:
    """Keep the GIL for ``seconds`` in Python, as a busy user loop does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _main_loop(case: str, world, car, seconds: float) -> None:
    clock = None
    if case.startswith("pygame"):
        import pygame
        clock = pygame.time.Clock()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if case == "idle":
            time.sleep(0.016)
            continue
        if clock is not None:
            clock.tick_busy_loop(60)
        else:
            spin(0.016)
        if case.endswith("looking"):
            car.get_transform()
            world.get_snapshot()


def run_async_bench(town: str, resolution: tuple[int, int], seconds: float, cases=CASES) -> dict[str, float]:
    """{case: world steps per second} for an asynchronous ``town`` with one listening RGB camera."""
    world = Client().load_world(town)
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = False, 0.05
    world.apply_settings(settings)
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            world.get_map().get_spawn_points()[0])
    camera, _ = _listening_camera(world, car, *resolution, fov=90.0)
    rates = {}
    try:
        world.wait_for_tick()
        for case in cases:
            start, t0 = world._frame, time.perf_counter()
            _main_loop(case, world, car, seconds)
            rates[case] = (world._frame - start) / (time.perf_counter() - t0)
    finally:
        camera.destroy()
        car.destroy()
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--town", default="Town02", help="town (default: %(default)s)")
    parser.add_argument("--res", default="1280x720", help="camera resolution WxH (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="wall time per case (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        resolution = parse_resolution(args.res)
    except ValueError as error:
        parser.error(str(error))
    if not args.seconds > 0:
        parser.error(f"--seconds {args.seconds} must be > 0")
    try:
        import pygame  # noqa: F401
        cases = CASES
    except ImportError:
        cases = CASES[:-1]
    try:
        rates = run_async_bench(args.town, resolution, args.seconds, cases)
    except TownNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"# asynchronous {args.town}, one {resolution[0]}x{resolution[1]} RGB camera, step 0.05 s (20 Hz), "
          f"{args.seconds:g} s per case; CPU: {cpu_model()}, {os.cpu_count()} cores")
    for case, rate in rates.items():
        print(f"{case:28s} {rate:6.1f} world steps/s")


if __name__ == "__main__":
    main()

"""Run one of CARLA's PythonAPI programs unchanged on the embedded simulator (conformance tests).

Usage::

    python tests/pythonapi_runner.py PROGRAM.py REPORT.json MAX_FRAMES [program arguments...]

The program runs through ``carla_embedded.run`` (what ``python -m carla_embedded.run`` does for a
user): ``carla.Client`` is ``carla_embedded.Client`` and the PythonAPI folder is on ``sys.path``.
After ``MAX_FRAMES`` frames the program gets a ``KeyboardInterrupt`` (what a user's Ctrl-C does,
so it runs its own clean-up): raised by the next ``world.tick()``/``wait_for_tick()``, or, for a
program that lets the asynchronous world run by itself, sent to its main thread by a watchdog.
REPORT.json gets: frames, and for every vehicle and walker seen its type and how far it moved (m),
and the actors left alive at exit.
"""
import _thread
import atexit
import json
import sys
import threading
import time


def main() -> None:
    program, report_path, max_frames, *args = sys.argv[1:]
    max_frames = int(max_frames)
    from carla_embedded.run import run_program
    from carla_embedded.world import World

    seen: dict[int, dict] = {}
    state = {"frames": 0, "world": None}

    def observe(world, raise_at_cap: bool = True) -> None:
        state["world"] = world
        state["frames"] = world._frame
        for actor in world._moving_actors():
            loc = actor.get_location()
            entry = seen.setdefault(actor.id, {"type": actor.type_id, "start": (loc.x, loc.y), "moved": 0.0})
            entry["moved"] = max(entry["moved"], ((loc.x - entry["start"][0]) ** 2 + (loc.y - entry["start"][1]) ** 2) ** 0.5)
        if raise_at_cap and state["frames"] >= max_frames:
            raise KeyboardInterrupt

    step_world = World._step_world

    def observed_step(self):
        frame = step_world(self)
        observe(self, raise_at_cap=False)
        return frame
    World._step_world = observed_step

    def watchdog() -> None:
        while state["frames"] < max_frames:
            time.sleep(0.05)
        time.sleep(1.0)                   # a synchronous program gets it from tick() first
        _thread.interrupt_main()
    threading.Thread(target=watchdog, daemon=True).start()

    def wrap(name):
        original = getattr(World, name)

        def method(self, *a, **k):
            result = original(self, *a, **k)
            observe(self)
            return result
        setattr(World, name, method)

    wrap("tick")
    wrap("wait_for_tick")

    def write_report() -> None:
        world = state["world"]
        alive = [a.type_id for a in world.get_actors()] if world is not None and world._alive else []
        with open(report_path, "w") as f:
            json.dump({"frames": state["frames"], "actors": {str(k): {"type": v["type"], "moved": v["moved"]}
                                                             for k, v in seen.items()},
                       "alive_at_exit": [t for t in alive if not t.startswith("traffic.")]}, f)

    atexit.register(write_report)
    try:
        run_program(program, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

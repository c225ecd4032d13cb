"""``python -m carla_embedded.run PROGRAM.py ARGS``: a CARLA client program, unchanged, on the
embedded simulator (CARLA's own examples run through it in test_conformance_pythonapi.py)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROGRAM = '''
import argparse
import sys

import carla
from helper import GREETING                       # a module beside the program, as from PythonAPI/examples

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=2000)
args = parser.parse_args()
client = carla.Client("127.0.0.1", args.port)
client.set_timeout(2.0)
world = client.load_world("Embedded01")
settings = world.get_settings()
settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
world.apply_settings(settings)
car = world.spawn_actor(world.get_blueprint_library().filter("vehicle.*")[0],
                        world.get_map().get_spawn_points()[0])
car.apply_control(carla.VehicleControl(throttle=1.0))
for _ in range(20):
    world.tick()
print(GREETING, sys.argv[0].endswith("program.py"), args.port, isinstance(car, carla.Vehicle),
      round(car.get_velocity().length(), 1) > 0)
'''


def run(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "carla_embedded.run", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_carla_program_runs_unchanged_with_its_arguments(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "program.py").write_text(PROGRAM)
    (tmp_path / "examples" / "helper.py").write_text("GREETING = 'hello'\n")
    proc = run("examples/program.py", "--port", "2044", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-5:] == ["hello", "True", "2044", "True", "True"]


def test_a_missing_program_is_one_clear_line(tmp_path):
    proc = run("no_such_program.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "no_such_program.py" in proc.stderr and "Traceback" not in proc.stderr
    assert run(cwd=tmp_path).returncode == 2                 # no program at all: usage, non-zero

"""Run a CARLA client program unchanged on the embedded simulator.

::

    python -m carla_embedded.run PythonAPI/examples/manual_control.py --sync
    carla-embedded-run PythonAPI/examples/automatic_control.py --sync --agent Behavior

The one change to the program's world: ``carla.Client`` is :class:`carla_embedded.Client`, so
``carla.Client(host, port)`` gives the in-process simulator; every other ``carla`` name is the
real wheel's. The program's grandparent folder goes on ``sys.path`` first, as when it runs from
CARLA's ``PythonAPI/examples`` (so ``import agents`` finds ``PythonAPI/agents``). The program sees
its own path as ``sys.argv[0]`` and the arguments after it. Ctrl-C reaches it as on a server.
"""
import os
import runpy
import sys

import carla

from .client import Client


def use_embedded_client() -> None:
    """Make ``carla.Client`` the embedded client for this process (the only change a program sees)."""
    carla.Client = Client


def run_program(program: str, args: list[str]) -> None:
    """Run ``program`` as ``__main__`` with ``args`` on the embedded simulator, as ``python
    program args`` would: its folder and its grandparent first on ``sys.path``."""
    folder = os.path.dirname(os.path.abspath(program))
    for path in (os.path.dirname(folder), folder):
        if path not in sys.path:
            sys.path.insert(0, path)
    use_embedded_client()
    sys.argv = [program, *args]
    runpy.run_path(program, run_name="__main__")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python -m carla_embedded.run PROGRAM.py [ARGS...]",
              file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    if not os.path.isfile(argv[0]):
        print(f"error: program {argv[0]!r} is not a file; give the path of a CARLA client script, "
              f"e.g. PythonAPI/examples/manual_control.py", file=sys.stderr)
        raise SystemExit(2)
    run_program(argv[0], argv[1:])


if __name__ == "__main__":
    main()

"""CARLA-style command-line flags and values shared by every CLI of the project (--sim --host --port --timeout --res --seed --sync, weather presets)."""
from __future__ import annotations

import argparse

import carla

from .connection import SIMS


def parse_res(text: str) -> tuple[int, int]:
    """``"800x600"`` -> (800, 600); raises ValueError naming the bad value."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r} is not WIDTHxHEIGHT (e.g. 800x600)") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ValueError(f"resolution {text!r} out of range: width and height must be in [16, 8192]")
    return w, h


def _res_type(text: str) -> tuple[int, int]:
    try:
        return parse_res(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _RefuseAsync(argparse.Action):
    """``--async`` exists because CARLA users type it; every CLI here needs frames matched by frame id."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {parser.prog} runs the simulator in synchronous mode "
                     "(fixed time step, sensor data matched by frame id); drop --async")


def add_carla_args(parser: argparse.ArgumentParser, res: str = "800x600", sync_default: bool = True,
                   port_list: bool = False) -> argparse.ArgumentParser:
    """Add --sim --host --port --timeout --res --seed --sync/--async to ``parser``; returns it.

    ``port_list=True`` makes --port a string holding one port or a comma list (one server per
    worker); the CLI parses it.
    """
    g = parser.add_argument_group("simulator")
    g.add_argument("--sim", choices=SIMS, default="auto",
                   help="auto: a CARLA server if one answers at --host:--port, else the embedded simulator")
    g.add_argument("--host", default="127.0.0.1", help="CARLA server host (default: %(default)s)")
    if port_list:
        g.add_argument("--port", default="2000",
                       help="CARLA server RPC port, or a comma list with one port per worker (default: %(default)s)")
    else:
        g.add_argument("--port", type=int, default=2000, help="CARLA server RPC port (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=10.0, help="client timeout, s (default: %(default)s)")
    g.add_argument("--res", type=_res_type, default=res, metavar="WxH",  # argparse converts a str default
                   help="camera resolution (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--sync", dest="sync", action="store_true", default=sync_default,
                   help="synchronous mode with a fixed time step (default: %(default)s)")
    g.add_argument("--async", dest="sync", action=_RefuseAsync, default=argparse.SUPPRESS,
                   help="not supported: refused with a message (the loops here are synchronous)")
    return parser


def weather_presets() -> dict[str, carla.WeatherParameters]:
    """CARLA's named weather presets (ClearNoon, WetNoon, HardRainNoon, ...)."""
    return {name: getattr(carla.WeatherParameters, name) for name in dir(carla.WeatherParameters)
            if not name.startswith("_") and isinstance(getattr(carla.WeatherParameters, name), carla.WeatherParameters)}


def parse_weather(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of presets; raises ValueError listing the valid presets."""
    presets = weather_presets()
    if text.strip().lower() == "all":
        return tuple(sorted(n for n in presets if n != "Default"))
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in presets]
    if bad or not names:
        raise ValueError(f"unknown weather preset {', '.join(bad) or repr(text)}; valid: all, {', '.join(sorted(presets))}")
    return names

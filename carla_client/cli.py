"""CARLA-style command-line flags and values shared by every CLI of the project (--sim --host --port --timeout --res --seed --sync, weather presets)."""
from __future__ import annotations

import argparse

import carla

from .config import SimConfig, argparse_type, add_dataclass_args, parse_port, parse_res  # noqa: F401  (parse_res re-exported)


class _RefuseAsync(argparse.Action):
    """``--async`` exists because CARLA users type it; every CLI here needs frames matched by frame id."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {parser.prog} runs the simulator in synchronous mode "
                     "(fixed time step, sensor data matched by frame id); drop --async")


_DEFAULT = object()


def add_carla_args(parser: argparse.ArgumentParser, res=_DEFAULT, port_list: bool = False) -> argparse.ArgumentParser:
    """Add :class:`carla_client.config.SimConfig`'s flags (--sim --host --port --timeout --res --seed) and
    --sync/--async to ``parser``; returns it. Defaults come from SimConfig.

    Args:
        res: this command's default for --res when it differs from SimConfig's (None: decided later,
            e.g. from the model's camera).
        port_list: --port takes one port or a comma list (one server per worker); see :func:`parse_ports`.
    """
    g = parser.add_argument_group("simulator")
    defaults = {} if res is _DEFAULT else {"res": parse_res(res) if isinstance(res, str) else res}
    add_dataclass_args(g, SimConfig, exclude=("port",) if port_list else (), defaults=defaults)
    if port_list:
        g.add_argument("--port", default=(SimConfig.port,), type=argparse_type(parse_ports),
                       help=f"CARLA server RPC port, or a comma list with one port per worker (default: {SimConfig.port})")
    g.add_argument("--sync", dest="sync", action="store_true", default=True,
                   help="synchronous mode with a fixed time step (default: on; the loops here need it)")
    g.add_argument("--async", dest="sync", action=_RefuseAsync, default=argparse.SUPPRESS,
                   help="not supported: refused with a message (the loops here are synchronous)")
    return parser


def parse_ports(text) -> tuple[int, ...]:
    """``"2000"`` or ``"2000,3000"`` -> ports; ValueError naming the bad value."""
    if isinstance(text, (tuple, list)):
        return tuple(parse_port(p) for p in text)
    ports = tuple(parse_port(p) for p in str(text).split(",") if p.strip())
    if not ports:
        raise ValueError(f"--port {text!r} is not a port or a comma list of ports")
    return ports


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

"""One way to configure every command: dataclasses whose fields carry their own flag, and one builder.

A field declares its help (and, where needed, its flag name, choices or parser) in its metadata
with :func:`arg`; :func:`add_dataclass_args` turns the fields into argparse flags whose defaults
come from the dataclass itself, and :func:`from_args` builds the dataclass back from the parsed
namespace. So a default exists once, in the dataclass, and a CLI module is a few lines::

    @dataclass
    class DriveConfig:
        fps: float = field(default=20.0, metadata=arg("simulation rate, Hz"))
        gate: str = field(default="hard", metadata=arg("gate", choices=gate_names))

    p = argparse.ArgumentParser(); add_dataclass_args(p, DriveConfig)
    cfg = from_args(DriveConfig, p.parse_args())

``choices`` may be a callable (a registry's ``names()``), read when the parser is built so that
registered plugins are offered. :class:`SimConfig` is the simulator connection shared by the
collector, the drive loop, the evaluation and the benches (CARLA's ``--host --port --timeout
--res --seed --sync``).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

from .connection import SIMS


def arg(help: str, *, flag: str | None = None, choices=None, parse: Callable | None = None,
        metavar: str | None = None, cli: bool = True, negative: str | None = None, boolean: bool = False) -> dict:
    """Field metadata for :func:`add_dataclass_args`.

    Args:
        help: the flag's help text (the default is appended).
        flag: the flag name (default ``--field-name``).
        choices: a sequence, or a callable returning one (a registry).
        parse: str -> value for types argparse cannot infer (``800x600`` -> (800, 600)); its
            ValueError becomes argparse's one-line usage error.
        metavar: as argparse's.
        cli: False keeps the field out of the CLI (set by code only).
        negative: for a bool defaulting to True, the one flag that turns it off (e.g. ``--no-display``);
            ``help`` then describes that flag.
        boolean: an optional bool (default None = decided later): ``--flag/--no-flag``.
    """
    return {"help": help, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar, "cli": cli,
            "negative": negative, "boolean": boolean}


def argparse_type(parse: Callable) -> Callable:
    def convert(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _default_of(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_dataclass_args(parser, cls, exclude: tuple[str, ...] = (), defaults: dict | None = None):
    """Add one flag per field of ``cls`` that has :func:`arg` metadata; returns ``parser``.

    ``defaults`` overrides dataclass defaults for this parser only (a command whose default differs
    for a documented reason, e.g. a benchmark's frame count).
    """
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        meta = {**arg(""), **f.metadata}  # plain {"help": ...} dicts work too (modules that cannot import arg)
        if "help" not in f.metadata or not meta["cli"] or f.name in exclude:
            continue
        default = defaults.get(f.name, _default_of(f))
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else \
            ",".join(map(str, default)) if isinstance(default, list) else default
        text = meta["help"]
        if default is not None and "default" not in text and not meta["negative"]:
            text += f" (default: {shown})"
        kw["help"] = text.replace("%", "%%")
        if isinstance(default, bool) or meta["boolean"]:
            if default and meta["negative"]:
                parser.add_argument(meta["negative"], action="store_false", **kw)
            else:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        choices = meta["choices"]
        if callable(choices):
            choices = list(choices())
        if choices is not None:
            kw["choices"] = choices
        if meta["parse"] is not None:
            kw["type"] = argparse_type(meta["parse"])
        elif default is not None and isinstance(default, (int, float, str)):
            kw["type"] = type(default)
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kw)
    return parser


def from_args(cls, args: argparse.Namespace, **overrides):
    """``cls(**fields found in args, **overrides)``: the inverse of :func:`add_dataclass_args`."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


# ------------------------------------------------------------------------------------- values
def parse_res(text) -> tuple[int, int]:
    """``"800x600"`` -> (800, 600); raises ValueError naming the bad value."""
    if isinstance(text, (tuple, list)):
        w, h = (int(v) for v in text)
    else:
        try:
            w, h = (int(v) for v in str(text).lower().split("x"))
        except ValueError:
            raise ValueError(f"resolution {text!r} is not WIDTHxHEIGHT (e.g. 800x600)") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ValueError(f"resolution {text!r} out of range: width and height must be in [16, 8192]")
    return w, h


def parse_port(text) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--port {text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"--port {text!r}: ports must be in 1..65535")
    return port


@dataclass
class SimConfig:
    """The simulator connection: CARLA's flags, shared by every command that drives a car.

    ``res`` here is the camera a command uses when nothing else decides it (the collector's camera;
    the drive loop takes its camera from the model unless told otherwise).
    """

    sim: str = field(default="auto", metadata=arg(
        "auto: a CARLA server if one answers at --host:--port, else the embedded simulator", choices=SIMS))
    host: str = field(default="127.0.0.1", metadata=arg("CARLA server host"))
    port: int = field(default=2000, metadata=arg("CARLA server RPC port", parse=parse_port))
    timeout: float = field(default=10.0, metadata=arg("client timeout, s"))
    res: tuple[int, int] | None = field(default=(800, 600), metadata=arg("camera resolution", parse=parse_res,
                                                                       metavar="WxH"))
    seed: int = field(default=0, metadata=arg("random seed"))

    def __post_init__(self):
        if self.sim not in SIMS:
            raise ValueError(f"unknown sim {self.sim!r}; valid: {', '.join(SIMS)}")
        if self.res is not None:
            self.res = parse_res(self.res)
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 s, got {self.timeout}")

"""Collect a balanced curve/straight image dataset, labelled from the map along the route driven.

Example::

    python -m carla_client.collect --sim embedded --town Town02 --frames 2000 --out data/curvature --seed 1
    python -m carla_client.collect --town Town01,Town02 --weather all --workers 2 --recovery 0.2

The work is done by :mod:`carla_client.collector`; this module is its command line. A car follows
random routes through the town's junction graph (``carla_client.planner``) with our route follower
(``carla_client.follower``) at town speeds, in synchronous mode. Each
frame is labelled from the planned route ahead (``carla_client.labels``); ambiguous frames and
frames of a class that is already full are not saved, and two saved frames are at least
``--min-spacing`` metres of driving apart.

Route-dependent frames: approaching a junction with several ways on, the label depends on which
one the planner picked, which the camera cannot see (the same crossing image would be ``curve`` on
one route and ``straight`` on another), so for a classifier such frames are label noise (see
``carla_client.labels.route_dependent``). ``--junction-policy flag`` (default) saves them with
``route_dependent=1`` outside the class quotas (driving policies want them; classifiers drop them),
``skip`` does not save them, ``keep`` saves them as ordinary frames. Every row also records the
route command (``RoadOption``) and whether the car was recovering from a ``--recovery`` perturbation. The summary counts what was skipped
(counted at the ``--min-spacing`` rate, like saved frames). Running again with the same ``--out`` resumes
(reconciling images and rows first); ``--frames`` is the total target of the dataset.

Speed: the camera is only listened to on ticks whose frame will be saved (the embedded
simulator renders, and a CARLA server streams, only for listened cameras); every other
tick costs the physics step, the controller and one projection on the route. The work
function (:func:`collect`) returns per-section timings; ``--profile`` prints them, and
``python -m carla_client.bench_collect`` runs the reference benchmark.

Exit codes: 0 done, 1 stopped early (disk full, error), 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

from datasets.manifest import read_manifest
from datasets.schema import CLASSES, INFO_NAME, LabelParams

from .cli import add_carla_args
from .collector import TOWN, CollectConfig, CollectResult, _raise_keyboard_interrupt, collect  # noqa: F401
from .config import SimConfig, add_dataclass_args, from_args

# ---------------------------------------------------------------------------------- CLI
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carla-collect",
                                description="Collect a balanced curve/straight dataset labelled from the map.",
                                add_help=add_help)
    add_carla_args(p, port_list=True)
    add_dataclass_args(p, CollectConfig, exclude=tuple(f.name for f in fields(SimConfig)))
    g = p.add_argument_group("labels")
    add_dataclass_args(g, LabelParams)
    p.add_argument("--cruise-speed", type=float, default=TOWN.cruise_speed_kmh,
                   help=f"route follower cruise speed, km/h (default: {TOWN.cruise_speed_kmh})")
    p.add_argument("--camera-always-on", action="store_true",
                   help="listen to the camera every tick instead of only on ticks that are saved")
    p.add_argument("--profile", action="store_true", help="print where the time went")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> CollectConfig:
    if not args.sync:
        raise ValueError("the collector needs synchronous mode (frames matched by frame id); drop --async")
    follower = replace(TOWN, cruise_speed_kmh=args.cruise_speed, min_speed_kmh=min(TOWN.min_speed_kmh, args.cruise_speed))
    return from_args(CollectConfig, args, port=args.port[0], ports=args.port, label=from_args(LabelParams, args),
                     follower=follower, camera_on_demand=not args.camera_always_on, progress=not args.no_progress)


def format_summary(result: CollectResult, out: Path, profile: bool = False) -> str:
    added = sum(result.added.values())
    lines = [f"added {added} frames in {result.seconds:.1f} s ({result.frames_per_second:.1f} frames/s, "
             f"{result.ticks} ticks, {result.episodes} episodes) -> {out}",
             "dataset: " + ", ".join(f"{c} {result.totals.get(c, 0)}" for c in CLASSES),
             f"skipped: {result.skipped.get('ambiguous', 0)} ambiguous, "
             + {"skip": f"{result.skipped.get('route_dependent', 0)} route-dependent at junctions",
                "flag": f"route-dependent at junctions saved flagged: {sum(result.flagged.values())} "
                        "(outside the class quotas; classifiers skip them)",
                "keep": "route-dependent frames kept (--junction-policy keep)"}[result.junction_policy],
             "per town: " + ", ".join(f"{k} {v}" for k, v in sorted(result.by_town.items())),
             "per weather: " + ", ".join(f"{k} {v}" for k, v in sorted(result.by_weather.items()))]
    if result.contact_sheet:
        lines.append(f"contact sheet: {result.contact_sheet}")
    if profile and result.timings:
        total = sum(result.timings.values())
        lines.append("time split (all workers): " + ", ".join(
            f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in sorted(result.timings.items(), key=lambda kv: -kv[1])))
        if result.ticks:
            lines.append(f"per tick: {1000 * result.timings.get('tick', 0) / result.ticks:.2f} ms simulator, "
                         f"{1000 * result.timings.get('control', 0) / result.ticks:.2f} ms controller; per saved frame: "
                         f"{1000 * (result.timings.get('encode', 0) + result.timings.get('write', 0)) / max(1, added):.2f}"
                         f" ms encode+write")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    from .connection import CarlaConnectionError

    try:
        result = collect(config)
    except KeyboardInterrupt:
        rows = read_manifest(config.out, strict=False) if (config.out / INFO_NAME).exists() else []
        counts = Counter(r["label"] for r in rows)
        print(f"interrupted: {config.out} holds " + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES)
              + "; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CarlaConnectionError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_summary(result, config.out, profile=args.profile))
    if result.stopped:
        print(f"stopped early: {result.stopped}; run again to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

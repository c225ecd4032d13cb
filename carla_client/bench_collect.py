"""Benchmark the collector: frames/s and where the time goes.

Example::

    python -m carla_client.bench_collect                     # 2000 frames of Town02, 800x600, embedded
    python -m carla_client.bench_collect --frames 500 --res 320x240 --keep data/bench

Collects into a temporary directory (deleted afterwards unless ``--keep``) and prints the
time per section: ``tick`` (simulator step incl. camera rendering, only on saved frames),
``control`` (route follower + camera scheduling), ``label``, ``encode`` (JPEG), ``write``
(file + manifest row), and set-up (connect, load town, planner, contact sheet).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from .cli import parse_res
from .collector import CollectConfig, collect


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Benchmark carla_client.collect")
    p.add_argument("--sim", default="embedded", choices=("auto", "carla", "embedded"))
    p.add_argument("--town", default="Town02")
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--res", default="800x600")
    p.add_argument("--min-spacing", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--camera-always-on", action="store_true", help="measure without on-demand camera")
    p.add_argument("--keep", type=Path, default=None, help="collect into this directory and keep it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        res = parse_res(args.res)
    except ValueError as err:
        p.error(str(err))
    with tempfile.TemporaryDirectory(prefix="bench_collect_") as tmp:
        out = args.keep or Path(tmp) / "ds"
        cfg = CollectConfig(out=out, sim=args.sim, towns=(args.town,), frames=args.frames, res=res,
                            seed=args.seed, min_spacing=args.min_spacing, progress=False,
                            camera_on_demand=not args.camera_always_on)
        r = collect(cfg)
    n = sum(r.added.values())
    print(f"{n} frames ({dict(r.added)}) of {args.town} at {res[0]}x{res[1]} in {r.seconds:.1f} s: "
          f"{r.frames_per_second:.1f} frames/s, {r.ticks} ticks ({r.ticks / max(1, n):.1f} ticks per saved frame)")
    sections = dict(r.timings)
    sections["set-up/other"] = max(0.0, r.seconds - sum(r.timings.values()))
    for name, sec in sorted(sections.items(), key=lambda kv: -kv[1]):
        print(f"  {name:13s} {sec:7.2f} s  {100 * sec / r.seconds:5.1f} %")
    print(f"  per tick: {1000 * r.timings.get('tick', 0) / max(1, r.ticks):.2f} ms simulator; per saved frame: "
          f"{1000 * r.timings.get('encode', 0) / max(1, n):.2f} ms encode, {1000 * r.timings.get('write', 0) / max(1, n):.2f} ms write")
    return 0


if __name__ == "__main__":
    sys.exit(main())

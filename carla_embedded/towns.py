"""Where the embedded simulator finds a town's OpenDRIVE road network.

Search order for ``<Town>.xodr`` (first hit wins):

1. ``$CARLA_MAPS_DIR``
2. ``$CARLA_ROOT/CarlaUE4/Content/Carla/Maps/OpenDrive`` (a packaged CARLA release)
3. the user cache ``${XDG_CACHE_HOME:-~/.cache}/carla_embedded/maps``
4. a download of the pinned public file (carla-simulator/opendrive-test-files) into that cache,
   checked against its sha256. ``$CARLA_EMBEDDED_MAPS_URL`` replaces the download folder URL
   (a mirror, or ``file://`` for air-gapped sites).

Any other ``<name>.xodr`` in the first three places loads by its name too (CARLA's Town06,
Town07, Town10HD, ... or a user's own map); only the pinned towns can be downloaded.
Built-in procedural towns (``procedural.PROCEDURAL_TOWNS``) need no file at all.
Town names are accepted the way ``carla.Client.load_world`` accepts them: ``Town02``,
``Town02_Opt`` (same road network) or ``/Game/Carla/Maps/Town02``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
from pathlib import Path

from .errors import TownNotFoundError, UnknownTownError
from .procedural import PROCEDURAL_TOWNS, generate

logger = logging.getLogger(__name__)

#: CARLA town -> sha256 of its pinned .xodr (../shared/carla_maps/README.md).
CARLA_TOWNS: dict[str, str] = {
    "Town01": "15794f0dff5911837e6059ed628618ad666b3526748b698c0be25cdef7b27f70",
    "Town02": "a6f47c763e09cdf34e759540eef8ef9399e2d899d8eaa33054a5203bceb5494b",
    "Town03": "a711706c130c12b788538439fa326f95c92b2486cff810c3001e8c5e04098299",
    "Town04": "1f334fab0f430819a93ad9f0c4a18cec8ff0c4d208412fa77eabaacdb327360d",
    "Town05": "d01a356d8f5bfb2e508347d08cfaa09f4f395062187038ba8b4212141e354e37",
}
DOWNLOAD_URL = ("https://raw.githubusercontent.com/carla-simulator/opendrive-test-files/"
                "5929b67cc414b611b701ad251fe1e6d30f465bba/OpenDrive/")
MAP_PATH_PREFIX = "/Game/Carla/Maps/"
DOWNLOAD_TIMEOUT_S = 30.0


#: other CARLA towns: loadable when their .xodr is in a searched folder (no pinned download)
OTHER_CARLA_TOWNS = ("Town06", "Town07", "Town10HD", "Town11", "Town12", "Town13", "Town15")


def _search_dirs() -> list[Path]:
    """The local folders searched for ``<name>.xodr``, in order (unset variables left out)."""
    maps_dir = os.environ.get("CARLA_MAPS_DIR")
    carla_root = os.environ.get("CARLA_ROOT")
    dirs = [Path(maps_dir)] if maps_dir else []
    if carla_root:
        dirs.append(Path(carla_root) / "CarlaUE4/Content/Carla/Maps/OpenDrive")
    return dirs + [cache_dir()]


def local_towns() -> list[str]:
    """Names of every ``.xodr`` file in the searched folders (first folder wins on duplicates)."""
    names: dict[str, str] = {}
    for folder in _search_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.xodr")):
                names.setdefault(path.stem.lower(), path.stem)
    return list(names.values())


def known_towns() -> list[str]:
    """Every town name ``load_world`` accepts: CARLA's towns, other local .xodr files, built-in towns."""
    carla_towns = list(CARLA_TOWNS) + list(OTHER_CARLA_TOWNS)
    lowered = {t.lower() for t in carla_towns} | {t.lower() for t in PROCEDURAL_TOWNS}
    extra = [t for t in local_towns() if t.lower() not in lowered]
    return carla_towns + extra + list(PROCEDURAL_TOWNS)


def canonical_town(name: str) -> str:
    """``'/Game/Carla/Maps/Town02'``, ``'Town02_Opt'``, ``'Town02'`` -> ``'Town02'``.

    Raises:
        UnknownTownError: not a known town; the message lists the valid ones.
    """
    base = re.sub(r"_Opt$", "", str(name).strip().rstrip("/").rsplit("/", 1)[-1])
    valid = known_towns()
    for town in valid:
        if base.lower() == town.lower():
            return town
    raise UnknownTownError(f"unknown town {name!r}; valid towns: {', '.join(valid)} "
                           f"(or put {base}.xodr in $CARLA_MAPS_DIR)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "carla_embedded" / "maps"


def _local_candidates(town: str) -> list[tuple[str, Path | None]]:
    """(description, path or None when its variable is unset) in search order."""
    filename = f"{town}.xodr"
    maps_dir = os.environ.get("CARLA_MAPS_DIR")
    carla_root = os.environ.get("CARLA_ROOT")
    return [
        ("$CARLA_MAPS_DIR", Path(maps_dir) / filename if maps_dir else None),
        ("$CARLA_ROOT/CarlaUE4/Content/Carla/Maps/OpenDrive",
         Path(carla_root) / "CarlaUE4/Content/Carla/Maps/OpenDrive" / filename if carla_root else None),
        ("user cache", cache_dir() / filename),
    ]


def find_local(town: str) -> Path | None:
    """First existing local file of a CARLA town, without downloading."""
    for _, path in _local_candidates(town):
        if path is not None and path.is_file():
            return path
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(town: str) -> Path:
    """Fetch the pinned ``<town>.xodr`` into the cache after checking its sha256.

    Raises:
        OSError: network/file error, or a checksum mismatch (nothing is written then).
    """
    url = os.environ.get("CARLA_EMBEDDED_MAPS_URL", DOWNLOAD_URL).rstrip("/") + f"/{town}.xodr"
    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        data = response.read()
    digest = _sha256(data)
    if digest != CARLA_TOWNS[town]:
        raise OSError(f"sha256 mismatch for {url}: got {digest}, expected {CARLA_TOWNS[town]}")
    target = cache_dir() / f"{town}.xodr"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)                # atomic: a crash never leaves a half file in the cache
    logger.info("saved %s (sha256 ok)", target)
    return target


def find_town_file(town: str) -> Path:
    """Path of a CARLA town's .xodr, downloading it into the cache if needed.

    Raises:
        UnknownTownError: not a CARLA town (the message lists the valid ones).
        TownNotFoundError: not found locally and the download failed; the one-line message lists
            every place searched and the download error.
    """
    town = canonical_town(town)
    if town in PROCEDURAL_TOWNS:
        raise UnknownTownError(f"{town!r} is a built-in town without a file; "
                               f"towns with files: {', '.join(CARLA_TOWNS)}")
    found = find_local(town)
    if found is not None:
        return found
    if town not in CARLA_TOWNS:
        searched = "; ".join(f"{label} ({path if path else 'unset'})" for label, path in _local_candidates(town))
        raise TownNotFoundError(f"{town}.xodr not found; searched: {searched}; it has no pinned download "
                                f"(only {', '.join(CARLA_TOWNS)} do). Put {town}.xodr in $CARLA_MAPS_DIR")
    try:
        return download(town)
    except (OSError, ValueError) as exc:           # URLError and HTTPError are OSErrors
        searched = "; ".join(f"{label} ({path if path else 'unset'})"
                             for label, path in _local_candidates(town))
        url = os.environ.get("CARLA_EMBEDDED_MAPS_URL", DOWNLOAD_URL)
        raise TownNotFoundError(
            f"{town}.xodr not found; searched: {searched}; download from {url} failed: {exc}. "
            f"Set CARLA_MAPS_DIR to a folder holding the CARLA .xodr files") from exc


def load_opendrive(name: str) -> tuple[str, str]:
    """(canonical town name, OpenDRIVE text) for any known town, procedural or file-based."""
    town = canonical_town(name)
    if town in PROCEDURAL_TOWNS:
        return town, generate(town)
    return town, find_town_file(town).read_text(encoding="utf-8")


def available_maps() -> list[str]:
    """CARLA-style map paths loadable right now without network: local CARLA towns + built-in ones."""
    local = [t for t in CARLA_TOWNS if find_local(t) is not None]
    pinned = {t.lower() for t in CARLA_TOWNS} | {t.lower() for t in PROCEDURAL_TOWNS}
    others = [t for t in local_towns() if t.lower() not in pinned]
    return [MAP_PATH_PREFIX + t for t in local + others + list(PROCEDURAL_TOWNS)]


#: CARLA's speed limits by OpenDRIVE road type where a road has no <speed> record, km/h.
SPEED_BY_ROAD_TYPE = {"town": 30.0, "lowspeed": 30.0, "pedestrian": 10.0, "bicycle": 20.0,
                      "rural": 50.0, "townexpressway": 50.0, "townarterial": 50.0, "towncollector": 50.0,
                      "townlocal": 30.0, "townplaystreet": 10.0, "townprivate": 30.0,
                      "motorway": 90.0, "trunk": 90.0}
DEFAULT_SPEED_LIMIT = 30.0
_UNIT_TO_KMH = {"km/h": 1.0, "kmh": 1.0, "mph": 1.609344, "m/s": 3.6, "ms": 3.6}


def road_speed_limits(opendrive: str) -> dict:
    """road id -> [(s, km/h), ...] sorted by s, from each road's ``<type><speed max unit/>`` records
    (CARLA's towns give them in mph), else the road type's default (``SPEED_BY_ROAD_TYPE``).
    Key ``None`` holds the map default. Roads without type or speed get ``DEFAULT_SPEED_LIMIT``."""
    import xml.etree.ElementTree as ET

    limits: dict = {None: [(0.0, DEFAULT_SPEED_LIMIT)]}
    try:
        root = ET.fromstring(opendrive)
    except ET.ParseError:
        return limits
    for road in root.iter("road"):
        try:
            road_id = int(road.get("id"))
        except (TypeError, ValueError):
            continue
        records = []
        for road_type in road.findall("type"):
            s = float(road_type.get("s", 0.0))
            speed = road_type.find("speed")
            value = None
            if speed is not None and speed.get("max") not in (None, "no limit", "undefined"):
                try:
                    value = float(speed.get("max")) * _UNIT_TO_KMH.get(speed.get("unit", "m/s").lower(), 3.6)
                except ValueError:
                    value = None
            if value is None:
                value = SPEED_BY_ROAD_TYPE.get((road_type.get("type") or "").lower(), DEFAULT_SPEED_LIMIT)
            records.append((s, round(value, 2)))
        limits[road_id] = sorted(records) or [(0.0, DEFAULT_SPEED_LIMIT)]
    return limits

"""The on-disk dataset format shared by the collector (writer) and training (reader).

A dataset directory holds::

    manifest.csv        one row per saved frame, columns MANIFEST_COLUMNS (in that order)
    dataset.json        the collection config (DatasetInfo as JSON)
    images/<label>/...  the frames, true-colour JPEG or PNG, never with an overlay
    contact_sheet.png   random samples per class

Manifest columns:

=====================  =====================================================================
image                  path relative to the dataset directory
label                  ``curve`` or ``straight``
town                   map name, e.g. ``Town02``
sim                    ``carla`` or ``embedded``
weather                CARLA preset name, e.g. ``ClearNoon``
episode                episode id, unique across workers/runs of one dataset (string)
frame                  simulator frame id of the image
timestamp              simulation time of the image, s
x, y, z                vehicle location in CARLA world coordinates, m
yaw                    vehicle yaw, deg (CARLA convention, left-handed, z up)
speed                  vehicle speed, km/h
steer, throttle, brake the control applied on that tick
heading_change_deg     label evidence: max |psi(s) - psi(0)| over the lookahead, deg
max_curvature          max |curvature| over the lookahead, 1/m
lookahead_m            lookahead L used for the label, m
command                the route's high-level command at the frame (CARLA ``RoadOption`` name:
                       LANEFOLLOW, LEFT, RIGHT, STRAIGHT, CHANGELANELEFT, CHANGELANERIGHT)
recovery               1 while the car comes back to the lane after a steering perturbation, else 0
route_dependent        1 when the label depends on a route choice at a junction ahead that the
                       camera cannot see (``junction_policy`` ``flag``); classifiers skip these rows
=====================  =====================================================================

The last three columns were added in format version 2; version-1 manifests (without them)
are read with ``command`` empty and the flags 0.

``dataset.json`` holds the **sensor/label contract** (:class:`CameraSpec` under ``"camera"``,
:class:`LabelParams` under ``"label"``): the camera a model must be driven with and the
definition of its labels. Training copies both into the checkpoint, export into the ONNX
metadata and the TensorRT sidecar, and the drive loop reads them back from the model.

Kept dependency-free (no torch, no carla, no OpenCV) so every layer imports it cheaply.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

CLASSES: tuple[str, str] = ("curve", "straight")
"""Class order used by every model, checkpoint and ONNX file: index 0 is ``curve``."""

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "label", "town", "sim", "weather", "episode", "frame", "timestamp",
    "x", "y", "z", "yaw", "speed", "steer", "throttle", "brake",
    "heading_change_deg", "max_curvature", "lookahead_m", "command", "recovery", "route_dependent",
)
MANIFEST_COLUMNS_V1: tuple[str, ...] = MANIFEST_COLUMNS[:19]
"""The columns of format version 1 (no policy columns); still readable."""
FORMAT_VERSION = 2

MANIFEST_NAME = "manifest.csv"
RANDOMIZATION_NAME = "randomization.jsonl"
"""Datasets collected with ``--domain-randomization``: one JSON object per saved frame, ``image`` (its
manifest path) and every sampled number (colours, sun, camera offsets and FOV, ``camera_variant``)."""
INFO_NAME = "dataset.json"

JUNCTION_POLICIES: tuple[str, ...] = ("flag", "skip", "keep")
"""Route-dependent frames (label decided by a route choice at a junction the camera cannot see):
``flag`` saves them with ``route_dependent=1`` (driving policies want them, classifiers skip them),
``skip`` does not save them, ``keep`` saves them as ordinary frames."""


class ContractError(ValueError):
    """Two camera/label contracts that must agree do not (one line naming the differing fields)."""


@dataclass(frozen=True)
class Mount:
    """Camera pose on the car (CARLA's attach transform): metres forward/right/up, degrees."""

    x: float = 1.5
    y: float = 0.0
    z: float = 2.0
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0


@dataclass(frozen=True)
class CameraSpec:
    """The camera a dataset was collected with, a model trained on and a drive must use.

    The default is CARLA's hood camera (800x600, 90 deg), the view the label lookahead was derived for
    (see ``carla_client.labels``).
    """

    width: int = 800
    height: int = 600
    fov: float = 90.0
    mount: Mount = field(default_factory=Mount)

    def __post_init__(self):
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "fov", float(self.fov))
        if isinstance(self.mount, dict):
            object.__setattr__(self, "mount", Mount(**{k: float(v) for k, v in self.mount.items()}))
        if not (16 <= self.width <= 8192 and 16 <= self.height <= 8192):
            raise ValueError(f"camera resolution {self.width}x{self.height} out of range: width and height "
                             "must be in [16, 8192]")
        if not 0 < self.fov < 180:
            raise ValueError(f"camera fov must be in (0, 180) deg, got {self.fov:g}")

    @property
    def res(self) -> tuple[int, int]:
        return self.width, self.height

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "fov": self.fov, "mount": asdict(self.mount)}

    @classmethod
    def from_json(cls, d: dict) -> "CameraSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class LabelParams:
    """The definition of a label; stored in ``dataset.json`` under ``"label"``.

    Args:
        lookahead_m: L, metres of route ahead of the car that decide the label.
        curve_deg: theta_curve; a heading change over L at or above it is ``curve``.
        straight_deg: theta_straight; at or below it is ``straight`` (between: ambiguous, never saved).
        junction_policy: what happens to route-dependent frames (:data:`JUNCTION_POLICIES`).
    """

    lookahead_m: float = field(default=25.0, metadata={"help": "label lookahead L along the route, m",
                                                        "flag": "--lookahead"})
    curve_deg: float = field(default=20.0, metadata={
        "help": "heading change over L at or above which a frame is 'curve', deg"})
    straight_deg: float = field(default=5.0, metadata={
        "help": "heading change over L at or below which a frame is 'straight', deg"})
    junction_policy: str = field(default="flag", metadata={
        "help": "flag: save frames whose label depends on an unseen route choice at a junction ahead with "
                "route_dependent=1, outside the class quotas (policies use them, classifiers skip them); "
                "skip: do not save them; keep: save them as ordinary frames", "choices": JUNCTION_POLICIES})

    def __post_init__(self):
        if not self.lookahead_m > 0:
            raise ValueError(f"lookahead_m must be > 0, got {self.lookahead_m}")
        if not 0 <= self.straight_deg < self.curve_deg:
            raise ValueError(f"need 0 <= straight_deg < curve_deg, got straight_deg={self.straight_deg}, "
                             f"curve_deg={self.curve_deg}")
        if self.junction_policy not in JUNCTION_POLICIES:
            raise ValueError(f"unknown junction policy {self.junction_policy!r}; valid: {', '.join(JUNCTION_POLICIES)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "LabelParams":
        """Datasets written before the junction policy existed saved every frame: ``keep``."""
        known = {f.name for f in fields(cls)}
        return cls(**{"junction_policy": "keep", **{k: v for k, v in d.items() if k in known}})


@dataclass(frozen=True)
class Contract:
    """What a model needs from the world: its camera and the definition of its labels."""

    camera: CameraSpec = field(default_factory=CameraSpec)
    label: LabelParams = field(default_factory=LabelParams)

    def to_json(self) -> dict:
        return {"camera": self.camera.to_json(), "label": self.label.to_json()}

    @classmethod
    def from_json(cls, d: dict | None) -> "Contract | None":
        """From ``dataset.json``, a checkpoint or ONNX metadata; None when ``d`` has no camera record."""
        if not d or "camera" not in d:
            return None
        return cls(CameraSpec.from_json(d["camera"]), LabelParams.from_json(d.get("label", {})))

    def differences(self, other: "Contract") -> list[str]:
        """Dotted names of the fields that differ, e.g. ``["camera.fov", "label.lookahead_m"]``."""
        a, b = self.to_json(), other.to_json()
        return _diff(a, b, "")


def _diff(a, b, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def describe_differences(a: Contract, b: Contract, a_name: str, b_name: str) -> str:
    """One line: ``camera.fov 110 (a) vs 90 (b), ...``."""
    ja, jb = a.to_json(), b.to_json()

    def get(d, dotted):
        for part in dotted.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    return ", ".join(f"{k} {get(ja, k)!r} ({a_name}) vs {get(jb, k)!r} ({b_name})" for k in a.differences(b))

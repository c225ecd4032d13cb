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
=====================  =====================================================================

Kept dependency-free so both ends import it cheaply.
"""
from __future__ import annotations

CLASSES: tuple[str, str] = ("curve", "straight")
"""Class order used by every model, checkpoint and ONNX file: index 0 is ``curve``."""

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "label", "town", "sim", "weather", "episode", "frame", "timestamp",
    "x", "y", "z", "yaw", "speed", "steer", "throttle", "brake",
    "heading_change_deg", "max_curvature", "lookahead_m",
)

MANIFEST_NAME = "manifest.csv"
INFO_NAME = "dataset.json"

"""carla.Transform maths the carla module lacks: composing a parent with a relative transform."""
from __future__ import annotations

import math

import numpy as np

import carla


def _rotation_matrix(rot: carla.Rotation) -> np.ndarray:
    """3x3 rotation with carla's conventions (same matrix as ``carla.Transform.get_matrix``)."""
    cy, sy = math.cos(math.radians(rot.yaw)), math.sin(math.radians(rot.yaw))
    cp, sp = math.cos(math.radians(rot.pitch)), math.sin(math.radians(rot.pitch))
    cr, sr = math.cos(math.radians(rot.roll)), math.sin(math.radians(rot.roll))
    return np.array([[cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
                     [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
                     [sp, -cp * sr, cp * cr]])


def compose(parent: carla.Transform, child: carla.Transform) -> carla.Transform:
    """World transform of something at ``child`` relative to ``parent`` (rigid attachment)."""
    r = _rotation_matrix(parent.rotation) @ _rotation_matrix(child.rotation)
    loc = parent.transform(carla.Location(child.location))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, r[2, 0]))))
    yaw = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    roll = math.degrees(math.atan2(-r[2, 1], r[2, 2]))
    return carla.Transform(carla.Location(loc.x, loc.y, loc.z), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))

"""The overlay shows the drive's infractions (collisions, red lights) and the Leaderboard penalty so far."""
import numpy as np
import pytest

from launch.overlay import COLORS, HudState, Overlay

pytestmark = pytest.mark.unit


def _row_band(ov, row):
    y0 = ov.margin + ov.line_h * row
    return slice(y0, y0 + ov.line_h), slice(0, ov.panel_w)


def _red_pixels(img, band):
    return int(np.all(img[band] == np.array(COLORS["bad"], np.uint8), axis=-1).sum())


def test_infractions_turn_the_infraction_row_red():
    ov = Overlay((800, 600))
    base = np.full((600, 800, 3), 128, np.uint8)
    clean = ov.draw(base.copy(), HudState(infractions={}, penalty=1.0))
    hit = ov.draw(base.copy(), HudState(infractions={"collision_vehicle": 1, "red_light": 1}, penalty=0.42))
    band = _row_band(ov, 15)
    assert (clean[band] != 128).any()                        # the row is drawn (dim) without infractions
    assert _red_pixels(clean, band) == 0
    assert _red_pixels(hit, band) > 50                       # and in red once there is one
    assert not np.array_equal(clean[band], hit[band])


def test_a_hold_at_a_red_light_is_shown_on_the_infraction_row():
    ov = Overlay((800, 600))
    base = np.full((600, 800, 3), 128, np.uint8)
    band = _row_band(ov, 15)
    moving = ov.draw(base.copy(), HudState())
    held = ov.draw(base.copy(), HudState(red_light_hold=True))
    brake = np.array(COLORS["brake"], np.uint8)
    assert int(np.all(held[band] == brake, axis=-1).sum()) > 50     # "HOLD: red light", in the brake colour
    assert int(np.all(moving[band] == brake, axis=-1).sum()) == 0

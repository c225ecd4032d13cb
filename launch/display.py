"""pygame window and keys. It only shows frames the overlay already drew and turns key presses into actions.

Keys (as in CARLA's manual_control, where they exist there): ESC or Q quit, H toggle the HUD,
R start/stop recording, P pause, G cycle the gate. Without a display (``--no-display``, or SDL
cannot open a window) :func:`open_display` returns None and the loop runs headless.
"""
from __future__ import annotations

import enum
import logging
import os

import numpy as np

log = logging.getLogger(__name__)


class Action(enum.Enum):
    QUIT = "quit"
    TOGGLE_HUD = "toggle_hud"
    TOGGLE_RECORD = "toggle_record"
    PAUSE = "pause"
    CYCLE_GATE = "cycle_gate"


KEY_BINDINGS: dict[str, Action] = {
    "escape": Action.QUIT, "q": Action.QUIT, "h": Action.TOGGLE_HUD,
    "r": Action.TOGGLE_RECORD, "p": Action.PAUSE, "g": Action.CYCLE_GATE,
}
"""pygame key name -> action; the help line in the window title is built from it."""


def actions_from_events(events) -> list[Action]:
    """Translate pygame events (KEYDOWN by key name, QUIT for the window's close button) into actions."""
    import pygame
    out = []
    for ev in events:
        if ev.type == pygame.QUIT:
            out.append(Action.QUIT)
        elif ev.type == pygame.KEYDOWN:
            action = KEY_BINDINGS.get(pygame.key.name(ev.key))
            if action is not None:
                out.append(action)
    return out


class Display:
    """A pygame window of the frame size that blits BGR frames."""

    def __init__(self, size: tuple[int, int], title: str = "carla-drive") -> None:
        import pygame
        self._pg = pygame
        pygame.display.init()
        self.size = (int(size[0]), int(size[1]))
        self.surface = pygame.display.set_mode(self.size, pygame.HWSURFACE | pygame.DOUBLEBUF)
        keys = ", ".join(f"{k.upper() if len(k) == 1 else k}: {a.value}" for k, a in KEY_BINDINGS.items())
        pygame.display.set_caption(f"{title}  ({keys})")

    def show(self, frame_bgr: np.ndarray) -> None:
        """Blit one HxWx3 BGR frame (pygame wants RGB, W x H: one swap of axes, no per-pixel Python)."""
        rgb = frame_bgr[..., ::-1].swapaxes(0, 1)
        self._pg.surfarray.blit_array(self.surface, rgb)
        self._pg.display.flip()

    def poll(self) -> list[Action]:
        """Actions from the keys pressed since the last call."""
        return actions_from_events(self._pg.event.get())

    def close(self) -> None:
        self._pg.display.quit()


def open_display(size: tuple[int, int], enabled: bool = True, title: str = "carla-drive") -> Display | None:
    """A :class:`Display`, or None (headless) when disabled or no display is available (logged once)."""
    if not enabled:
        return None
    driver = os.environ.get("SDL_VIDEODRIVER", "")
    if driver != "dummy" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name != "nt":
        log.info("no display available (DISPLAY unset): running headless")
        return None
    try:
        return Display(size, title)
    except Exception as e:  # pygame.error and friends: no usable video device
        log.info("cannot open a window (%s): running headless", e)
        return None

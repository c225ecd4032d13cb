"""Collector hook for domain randomisation (embedded simulator only): one call per saved frame.

Where the collector calls it (``carla_client/collect.py``, being refactored by the lead)::

    # config: CollectConfig gains  domain_randomization: bool = False  (CLI --domain-randomization)
    # once per worker, after connecting, before the episodes:
    dr_cfg = DomainRandomizationConfig() if config.domain_randomization else None
    check_domain_randomization(world, dr_cfg)             # one-line refusal on a real CARLA server
    # in _run_episode, before the tick whose image is saved:
    dr_row = apply_domain_randomization(world, cam_bp, rng, dr_cfg)   # {} when off
    # ... tick, label from the map as today ...
    row.update(dr_row)                                     # manifest columns, see MANIFEST_COLUMNS_DR
    # at the end of the worker:  apply_domain_randomization(world, cam_bp, rng, None) switches it off

The per-frame record holds every sampled number (camera offsets and FOV, per-material BGR gains,
sky, sun, cloudiness, clutter) so a dataset can be audited; ``camera_variant`` (height/pitch/FOV
bins) is the column ``training.evaluate`` groups its robustness report by. Labels stay exact: the
record never changes the vehicle, and labels come from the map along the vehicle's route.

A CARLA server renders its own world: there is no such hook, so the flag is refused with one line
(:class:`DomainRandomizationUnsupported`) instead of silently collecting unrandomised frames.
"""
from __future__ import annotations

import logging
import weakref

import numpy as np

from carla_embedded.randomization import DomainRandomization, RandomizationConfig

log = logging.getLogger(__name__)

DomainRandomizationConfig = RandomizationConfig

MANIFEST_COLUMNS_DR: tuple[str, ...] = (*DomainRandomization().record().keys(), "dr_cam_fov_nominal")
"""Columns to append to manifest.csv when randomising (``dr`` = 1, ``dr_*`` numbers, ``camera_variant``)."""

_HOOK = "set_domain_randomization"  # embedded World method; looked up by name: a carla.World lacks it
_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # world -> its sampler between frames


class DomainRandomizationUnsupported(ValueError):
    """--domain-randomization on a real CARLA server (it renders its own world)."""


def check_domain_randomization(world, cfg: RandomizationConfig | None) -> None:
    """Raise DomainRandomizationUnsupported (one line) if ``cfg`` is on and ``world`` is not embedded."""
    if cfg is not None and cfg.enabled and getattr(world, _HOOK, None) is None:
        raise DomainRandomizationUnsupported(
            "--domain-randomization needs the embedded simulator (--sim embedded): a CARLA server renders "
            "its own world; drop the flag to collect from it")


def apply_domain_randomization(world, camera_bp, rng: np.random.Generator, cfg: RandomizationConfig | None,
                               advance: bool = True) -> dict:
    """Draw this frame's randomisation and hand it to the embedded renderer; returns its record.

    Args:
        world: the embedded ``World`` (a real ``carla.World`` raises unless ``cfg`` is None/off).
        camera_bp: the camera blueprint; its ``fov`` is the nominal one recorded beside the drawn FOV
            (the drawn FOV is applied at render time, so the spawned sensor need not be re-created).
        rng: the collector's generator (the draw is reproducible from the collection seed).
        cfg: ranges, or None / ``enabled=False`` to switch randomisation off (returns {}).
        advance: advance the appearance clock (False: the previous frame was not saved; only the
            camera jitter is drawn again, see :meth:`DomainRandomization.step`).
    Returns:
        The manifest columns of :data:`MANIFEST_COLUMNS_DR` for this frame, or {} when off.
    """
    hook = getattr(world, _HOOK, None)
    if cfg is None or not cfg.enabled:
        if hook is not None:
            hook(None)
        return {}
    check_domain_randomization(world, cfg)
    state = _STATES.get(world)
    if state is None or state.config != cfg:
        state = _STATES[world] = DomainRandomization(cfg)
    state.step(rng, advance)
    hook(state)
    record = state.record()
    if camera_bp is not None and camera_bp.has_attribute("fov"):
        record["dr_cam_fov_nominal"] = float(camera_bp.get_attribute("fov").as_float())
    return record

"""Leakage-free train/val/test splits: never a random split over frames.

Consecutive frames of one drive are nearly identical, so a random frame split puts copies of
validation frames in training and reports ~99 % on anything. Here the unit is the episode:

* towns named in ``val_towns`` / ``test_towns`` are held out whole (the headline number:
  accuracy on a town the model never saw);
* otherwise (no ``val_towns``) each remaining town's episodes are shuffled with ``seed`` and a
  ``val_split`` fraction of them (at least one when the town has two or more) goes to validation.

The result is written to ``split.json`` so a run can be audited and resumed on the same split.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from datasets.dataset import DatasetError, FrameTable

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How to split. Fractions are of episodes, not frames."""
    val_split: float = 0.2
    val_towns: tuple[str, ...] = ()
    test_towns: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError(f"--val-split {self.val_split}: must be in [0, 1)")
        both = set(self.val_towns) & set(self.test_towns)
        if both:
            raise ValueError(f"town(s) {', '.join(sorted(both))} given in both --val-towns and --test-towns")


@dataclass
class Split:
    """Index arrays into a FrameTable, plus what produced them."""
    config: SplitConfig
    indices: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self, table: FrameTable) -> dict:
        """Plain-JSON description: per split the episodes (with town and frame counts) and class counts."""
        out = {"config": {"val_split": self.config.val_split, "val_towns": list(self.config.val_towns),
                          "test_towns": list(self.config.test_towns), "seed": self.config.seed},
               "data": [str(r) for r in table.roots]}
        keys = table.episode_keys()
        for name in SPLITS:
            idx = self.indices[name]
            sub = table.subset(idx)
            eps = {}
            for k, town in zip(keys[idx], sub.town):
                eps.setdefault(k, {"town": town, "frames": 0})["frames"] += 1
            out[name] = {"frames": int(len(idx)), "classes": sub.class_counts(),
                         "towns": sorted(set(sub.town.tolist())),
                         "episodes": [{"episode": k, **v} for k, v in sorted(eps.items())]}
        return out

    def save(self, path: str | os.PathLike, table: FrameTable) -> None:
        Path(path).write_text(json.dumps(self.to_json(table), indent=2))


def _check_towns(flag: str, towns: Sequence[str], present: list[str]) -> None:
    unknown = [t for t in towns if t not in present]
    if unknown:
        raise DatasetError(f"{flag}: unknown town(s) {', '.join(unknown)}; towns in the data: {', '.join(present)}")


def make_split(table: FrameTable, config: SplitConfig) -> Split:
    """Split ``table`` by held-out town and by episode inside each town (see module docstring).

    Raises:
        DatasetError: a town in val/test towns not in the data (lists the towns present), or an
            empty train or validation split.
    """
    present = table.towns()
    _check_towns("--val-towns", config.val_towns, present)
    _check_towns("--test-towns", config.test_towns, present)
    keys = table.episode_keys()
    assign = np.full(len(table), "train", dtype=object)
    assign[np.isin(table.town, list(config.test_towns))] = "test"
    if config.val_towns:
        assign[np.isin(table.town, list(config.val_towns))] = "val"
    elif config.val_split > 0:
        rng = np.random.default_rng(config.seed)
        for town in present:
            if town in config.test_towns:
                continue
            eps = sorted(set(keys[table.town == town].tolist()))
            if len(eps) < 2:
                log.warning("%s has a single episode: all of it goes to training (no validation frames from it)", town)
                continue
            n_val = min(len(eps) - 1, max(1, int(round(config.val_split * len(eps)))))
            val_eps = rng.permutation(np.asarray(eps, dtype=object))[:n_val]
            assign[(table.town == town) & np.isin(keys, val_eps)] = "val"
    split = Split(config, {name: np.flatnonzero(assign == name) for name in SPLITS})
    if len(split.indices["train"]) == 0:
        raise DatasetError(f"training split is empty: every town ({', '.join(present)}) is held out")
    if len(split.indices["val"]) == 0:
        raise DatasetError("validation split is empty: give --val-towns TOWN or collect at least two episodes "
                           f"per town (towns: {', '.join(present)})")
    return split


def load_split(path: str | os.PathLike, table: FrameTable) -> Split:
    """Rebuild a saved split on ``table`` (for --resume): frames are matched by episode."""
    return split_from_json(json.loads(Path(path).read_text()), table)


def split_from_json(saved: dict, table: FrameTable) -> Split:
    """:func:`load_split` on an already parsed ``split.json`` (a caller that also reads its ``data``)."""
    config = SplitConfig(val_split=saved["config"]["val_split"], val_towns=tuple(saved["config"]["val_towns"]),
                         test_towns=tuple(saved["config"]["test_towns"]), seed=saved["config"]["seed"])
    keys = table.episode_keys()
    indices = {}
    for name in SPLITS:
        eps = [e["episode"] for e in saved[name]["episodes"]]
        indices[name] = np.flatnonzero(np.isin(keys, eps))
    return Split(config, indices)

"""Gates: decide, on every tick, how much each driving expert is in charge.

A gate turns the classifier's p(curve) (or the map's ground-truth label, for the ``oracle``) into
weights over the experts, which are named after the classes (``datasets.schema.CLASSES``). Weights
always sum to 1; the expert "in charge" is the one with the largest weight.

=========  ==========================================================================================
hard       argmax of an EMA-smoothed p(curve) with a Schmitt trigger (switch to ``curve`` at
           p >= on, back at p <= off) and a minimum dwell, so a noisy classifier does not flicker
soft       weights = (p, 1 - p) of the EMA-smoothed p(curve): the controls are blended
oracle     the map's ground-truth label along the route (an upper bound for a perfect classifier)
curve      always the curve expert (baseline)
straight   always the straight expert (baseline)
=========  ==========================================================================================

When p(curve) is missing or not finite (failed inference), every gate keeps its last decision and
reports ``valid=False`` so the controller can slow down; see :mod:`control.moe`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from datasets.schema import CLASSES

CURVE, STRAIGHT = CLASSES


@dataclass(frozen=True)
class GateDecision:
    """Weights over experts (sum 1) and whether the input the gate needed was valid this tick."""
    weights: dict[str, float]
    valid: bool = True

    @property
    def in_charge(self) -> str:
        """The expert with the largest weight (ties go to ``straight``, the faster-but-safe-on-straights default)."""
        return max(sorted(self.weights, key=lambda k: k != STRAIGHT), key=lambda k: self.weights[k])


def _one_hot(name: str) -> dict[str, float]:
    return {c: (1.0 if c == name else 0.0) for c in CLASSES}


def _valid_p(p: float | None) -> bool:
    return p is not None and math.isfinite(p) and 0.0 <= p <= 1.0


class Gate(Protocol):
    """What the MoE controller needs from a gate."""
    name: str
    needs_model: bool
    kind: str  # one of GATE_KINDS: how reports group it

    def update(self, p_curve: float | None, truth: str | None = None) -> GateDecision:
        """Decide for this tick from p(curve) (classifier) and the ground-truth label (oracle only)."""

    def reset(self) -> None:
        """Forget the state (start of an episode)."""


@dataclass(frozen=True)
class HardGateParams:
    """Schmitt trigger on an exponential moving average of p(curve).

    ``ema_alpha`` weights the newest sample (1 = no smoothing). At 20 Hz, ``min_dwell_frames=4`` is
    0.2 s: shorter than the ~1 s a car needs to reach a bend at town speed, long enough to swallow
    single-frame misclassifications.
    """
    on_threshold: float = 0.6
    off_threshold: float = 0.4
    ema_alpha: float = 0.5
    min_dwell_frames: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.off_threshold <= self.on_threshold <= 1.0:
            raise ValueError(f"need 0 <= off_threshold <= on_threshold <= 1, got off={self.off_threshold}, "
                             f"on={self.on_threshold}")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if self.min_dwell_frames < 0:
            raise ValueError(f"min_dwell_frames must be >= 0, got {self.min_dwell_frames}")


@dataclass
class HardGate:
    """Argmax with hysteresis: one expert fully in charge at a time."""
    params: HardGateParams = field(default_factory=HardGateParams)
    name: str = "hard"
    needs_model: bool = True
    kind: str = "learned"
    _smoothed: float | None = None
    _state: str = STRAIGHT
    _dwell: int = 0

    def reset(self) -> None:
        self._smoothed, self._state, self._dwell = None, STRAIGHT, 0

    def update(self, p_curve: float | None, truth: str | None = None) -> GateDecision:
        if not _valid_p(p_curve):
            return GateDecision(_one_hot(self._state), valid=False)
        a = self.params.ema_alpha
        if self._smoothed is None:
            self._smoothed = p_curve
            self._state = CURVE if p_curve >= 0.5 else STRAIGHT
        else:
            self._smoothed = a * p_curve + (1.0 - a) * self._smoothed
        self._dwell += 1
        if self._dwell >= self.params.min_dwell_frames:
            if self._state == STRAIGHT and self._smoothed >= self.params.on_threshold:
                self._state, self._dwell = CURVE, 0
            elif self._state == CURVE and self._smoothed <= self.params.off_threshold:
                self._state, self._dwell = STRAIGHT, 0
        return GateDecision(_one_hot(self._state))


@dataclass(frozen=True)
class SoftGateParams:
    """EMA on p(curve) before blending, so the blended steering does not inherit frame-to-frame noise."""
    ema_alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")


@dataclass
class SoftGate:
    """Probability-weighted blend: weight(curve) = p, weight(straight) = 1 - p."""
    params: SoftGateParams = field(default_factory=SoftGateParams)
    name: str = "soft"
    needs_model: bool = True
    kind: str = "learned"
    _smoothed: float | None = None

    def reset(self) -> None:
        self._smoothed = None

    def _weights(self) -> dict[str, float]:
        p = 0.0 if self._smoothed is None else min(1.0, max(0.0, self._smoothed))
        return {CURVE: p, STRAIGHT: 1.0 - p}

    def update(self, p_curve: float | None, truth: str | None = None) -> GateDecision:
        if not _valid_p(p_curve):
            return GateDecision(self._weights(), valid=False)
        a = self.params.ema_alpha
        self._smoothed = p_curve if self._smoothed is None else a * p_curve + (1.0 - a) * self._smoothed
        return GateDecision(self._weights())


@dataclass
class OracleGate:
    """Follows the map's ground-truth label (``carla_client.labels`` along the route); keeps its last
    decision on ``ambiguous`` stretches, where neither expert is wrong."""
    name: str = "oracle"
    needs_model: bool = False
    kind: str = "oracle"
    _state: str = STRAIGHT

    def reset(self) -> None:
        self._state = STRAIGHT

    def update(self, p_curve: float | None, truth: str | None = None) -> GateDecision:
        if truth in CLASSES:
            self._state = truth
        return GateDecision(_one_hot(self._state), valid=truth is not None)


@dataclass
class FixedGate:
    """Always the same expert: the single-expert baselines."""
    expert: str = STRAIGHT
    needs_model: bool = False
    kind: str = "fixed"

    def __post_init__(self) -> None:
        if self.expert not in CLASSES:
            raise ValueError(f"unknown expert {self.expert!r}; valid: {', '.join(CLASSES)}")

    @property
    def name(self) -> str:
        return self.expert

    def reset(self) -> None:
        pass

    def update(self, p_curve: float | None = None, truth: str | None = None) -> GateDecision:
        return GateDecision(_one_hot(self.expert))


GATES: dict[str, Callable[..., Gate]] = {
    "hard": HardGate,
    "soft": SoftGate,
    "oracle": OracleGate,
    CURVE: lambda: FixedGate(CURVE),
    STRAIGHT: lambda: FixedGate(STRAIGHT),
}
"""Gate name -> factory. Order is the order ``G`` cycles through in the drive window."""


def register_gate(name: str, factory: Callable[..., Gate]) -> None:
    """Add a gate (e.g. a learned one) under ``name``."""
    GATES[name] = factory


def gate_names() -> list[str]:
    return list(GATES)


def create_gate(name: str, **params) -> Gate:
    """Build the gate called ``name``; raises ValueError listing the valid names."""
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; valid: {', '.join(GATES)}")
    return GATES[name](**params)


def gate_needs_model(name: str) -> bool:
    return create_gate(name).needs_model


GATE_KINDS = ("learned", "oracle", "fixed")
"""``learned``: decides from the classifier; ``oracle``: from the map's label (the upper bound of a gate);
``fixed``: one expert always in charge (the baselines)."""


def gates_of_kind(kind: str, names=None) -> list[str]:
    """The gates of ``names`` (default: all registered) whose ``kind`` is ``kind``, in registry order."""
    if kind not in GATE_KINDS:
        raise ValueError(f"unknown gate kind {kind!r}; valid: {', '.join(GATE_KINDS)}")
    return [n for n in (gate_names() if names is None else names) if create_gate(n).kind == kind]

"""``carla.command`` classes that also take embedded blueprints and actors.

Why: CARLA's programs build batches with ``carla.command.SpawnActor(blueprint, transform)`` or
``DestroyActor(actor)``. The real classes are Boost.Python and accept only C++ blueprints and
actors, which the embedded simulator cannot create. ``install()`` (run by ``carla_embedded.Client``)
puts a stand-in under each name in ``carla.command``. Built from real carla arguments (ids,
transforms, real actors) a stand-in returns the real Boost.Python command, so a real
``carla.Client`` in the same process still receives exactly the commands it always did; only
when an argument is an embedded object does it build a plain Python command that the embedded
client's ``apply_batch`` runs. ``isinstance(cmd, carla.command.SpawnActor)`` holds for both kinds.
"""
from __future__ import annotations

import carla

from .blueprints import ActorBlueprint
from .errors import CarlaSurface

#: the real Boost.Python classes, captured before any stand-in replaces them
REAL = {name: getattr(carla.command, name) for name in dir(carla.command)
        if isinstance(getattr(carla.command, name), type) and not name.startswith("_")}
if "SpawnActor" in REAL and getattr(REAL["SpawnActor"], "_embedded_stand_in", False):   # re-import
    REAL = {name: getattr(cls, "_real", cls) for name, cls in REAL.items()}


def _embedded(value) -> bool:
    return isinstance(value, (CarlaSurface, ActorBlueprint))


class _StandInMeta(type):
    def __instancecheck__(cls, obj):
        return type.__instancecheck__(cls, obj) or isinstance(obj, cls._real)


class _Command(metaclass=_StandInMeta):
    """Base of the stand-ins: real command for real arguments, this object otherwise."""

    _real: type = object
    _embedded_stand_in = True
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __new__(cls, *args, **kwargs):
        if not any(_embedded(v) for v in list(args) + list(kwargs.values())):
            return cls._real(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        values = dict(self._defaults)
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} arguments ({self._fields})")
        values.update(zip(self._fields, args))
        for key, value in kwargs.items():
            if key not in self._fields:
                raise TypeError(f"{type(self).__name__} has no argument {key!r}; arguments: {self._fields}")
            values[key] = value
        missing = [f for f in self._fields if f not in values]
        if missing:
            raise TypeError(f"{type(self).__name__} missing argument(s) {missing}")
        first = values.get(self._fields[0])
        if self._fields[0] == "actor":
            values["actor_id"] = first if isinstance(first, int) else first.id
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


class SpawnActor(_Command):
    """SpawnActor(blueprint, transform[, parent]) with ``then(command)`` run on the new actor."""

    _real = REAL["SpawnActor"]
    _fields = ("blueprint", "transform", "parent")
    _defaults = {"parent": None}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        parent = self.parent
        self.parent_id = parent if isinstance(parent, int) or parent is None else parent.id
        self.attachment_type = carla.AttachmentType.Rigid
        self.socket_name = ""
        self.do_after: list = []

    def then(self, command):
        """Run ``command`` after the spawn, with ``FutureActor`` replaced by the new actor's id."""
        self.do_after.append(command)
        return self


def _actor_command(name: str, fields: tuple[str, ...], defaults=None) -> type:
    return _StandInMeta(name, (_Command,), {
        "_real": REAL[name], "_fields": ("actor",) + fields, "_defaults": dict(defaults or {}),
        "__doc__": f"carla.command.{name} that also takes an embedded actor."})


DestroyActor = _actor_command("DestroyActor", ())
SetAutopilot = _actor_command("SetAutopilot", ("enabled", "tm_port"), {"enabled": True, "tm_port": 8000})
ApplyVehicleControl = _actor_command("ApplyVehicleControl", ("control",))
ApplyWalkerControl = _actor_command("ApplyWalkerControl", ("control",))
ApplyTransform = _actor_command("ApplyTransform", ("transform",))
ApplyTargetVelocity = _actor_command("ApplyTargetVelocity", ("velocity",))
SetSimulatePhysics = _actor_command("SetSimulatePhysics", ("enabled",))
SetVehicleLightState = _actor_command("SetVehicleLightState", ("light_state",))

STAND_INS = {cls.__name__: cls for cls in (SpawnActor, DestroyActor, SetAutopilot, ApplyVehicleControl,
                                           ApplyWalkerControl, ApplyTransform, ApplyTargetVelocity,
                                           SetSimulatePhysics, SetVehicleLightState)}


def install() -> None:
    """Put the stand-ins into ``carla.command`` (idempotent)."""
    for name, cls in STAND_INS.items():
        setattr(carla.command, name, cls)


def uninstall() -> None:
    """Restore the real Boost.Python classes."""
    for name in STAND_INS:
        setattr(carla.command, name, REAL[name])


class Response:
    """carla.command.Response: the outcome of one batch command."""

    def __init__(self, actor_id: int, error: str = ""):
        self.actor_id = actor_id
        self.error = error

    def has_error(self) -> bool:
        return bool(self.error)

    def __repr__(self):
        return f"Response(actor_id={self.actor_id}, error={self.error!r})"

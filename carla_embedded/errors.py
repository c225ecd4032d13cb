"""Exceptions of the embedded simulator.

Each one says what went wrong and what the valid choices are, so a user who ran a CARLA
script against the embedded simulator sees at once which part of the carla API is missing.
"""


class UnsupportedFeatureError(RuntimeError):
    """A carla API call the embedded simulator does not implement (instead of silently doing nothing)."""

    def __init__(self, feature: str, hint: str = ""):
        message = (f"the embedded CARLA simulator does not support {feature}"
                   + (f"; {hint}" if hint else "")
                   + "; run against a real CARLA server (--sim carla) for this")
        super().__init__(message)
        self.feature = feature


class UnknownTownError(ValueError):
    """A town name that is neither a CARLA town nor a built-in procedural town."""


class TownNotFoundError(FileNotFoundError):
    """A known town whose OpenDRIVE file is in none of the searched places and could not be downloaded."""


class UnsupportedAttributeError(UnsupportedFeatureError, AttributeError):
    """A carla attribute looked up on an embedded object that lacks it.

    Also an ``AttributeError``, so ``hasattr(world, "debug")`` stays False instead of raising.
    """


def _is_boost(cls: type) -> bool:
    return cls.__module__.startswith("carla.libcarla")


def _unsupported_method(name: str):
    def method(self, *args, **kwargs):
        raise UnsupportedFeatureError(f"{type(self)._carla_class.__name__}.{name}")
    method.__name__ = name
    method.__unsupported__ = True
    return method


def _unsupported_property(name: str) -> property:
    def getter(self):
        raise UnsupportedAttributeError(f"{type(self)._carla_class.__name__}.{name}")
    getter.__unsupported__ = True
    return property(getter)


class CarlaSurface:
    """Mixin: a carla method the embedded class lacks raises ``UnsupportedAttributeError``
    naming it, instead of a bare ``AttributeError``.

    A subclass may also inherit from the real carla class it plays (``class Vehicle(Actor,
    carla.Vehicle)``), so ``isinstance(actor, carla.Vehicle)`` holds as user code expects. The
    Boost.Python methods of that class cannot run on a Python object (they need a C++ actor), so
    every public carla attribute the subclass does not implement is replaced, at class creation,
    by one that raises ``UnsupportedFeatureError`` naming it (properties raise the
    ``AttributeError`` flavour so ``hasattr`` stays False). Such stand-ins carry
    ``__unsupported__ = True`` so the contract test can tell them from implementations.
    """

    _carla_class: type = object

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        boost_bases = [c for c in cls.__mro__ if _is_boost(c) and c.__name__ not in ("instance",)]
        if not boost_bases:
            return
        ours = [c for c in cls.__mro__ if not _is_boost(c) and c is not object]
        for name in dir(boost_bases[0]):
            if name.startswith("_") or any(name in c.__dict__ for c in ours):
                continue
            real = getattr(boost_bases[0], name)
            stub = (_unsupported_property if isinstance(real, property) else _unsupported_method)(name)
            setattr(cls, name, stub)
        cls.__str__ = cls.__repr__             # carla's __str__ reads the C++ object

    def __getattr__(self, name: str):
        if not name.startswith("_") and hasattr(self._carla_class, name):
            raise UnsupportedAttributeError(f"{self._carla_class.__name__}.{name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

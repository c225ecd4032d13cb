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


class CarlaSurface:
    """Mixin: a carla method the embedded class lacks raises ``UnsupportedAttributeError``
    naming it, instead of a bare ``AttributeError``."""

    _carla_class: type = object

    def __getattr__(self, name: str):
        if not name.startswith("_") and hasattr(self._carla_class, name):
            raise UnsupportedAttributeError(f"{self._carla_class.__name__}.{name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

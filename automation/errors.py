"""Domain errors. The CLI (and later the service) turn these into one-line messages and one JSON shape."""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of every error Shoal reports to a user; ``code`` is stable and machine-readable."""

    code = "shoal_error"

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": str(self)}


class ConfigError(ShoalError):
    code = "config_error"


class InputError(ShoalError):
    """A file or argument given by the user cannot be used (missing file, unknown preset, ...)."""

    code = "input_error"


class EmptyInputError(InputError):
    code = "empty_input"


class EmptyStoreError(ShoalError):
    code = "empty_store"


class NotFoundError(ShoalError):
    code = "not_found"


class ValidationError(ShoalError):
    """A parameter value is out of its domain; the message names the parameter and the value."""

    code = "invalid_parameter"

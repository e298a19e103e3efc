"""One exception type for every mistake a user can make.

The CLI prints a `MobilenetsError` as a single line and exits with code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MobilenetsError(Exception):
    """A problem with the user's input (file, name, shape, network), not a bug."""


class ConfigError(MobilenetsError, ValueError):
    """An invalid model configuration (unknown name, alpha <= 0, resolution < 32, ...)."""


class ImageError(MobilenetsError):
    """An image that cannot be decoded or is too small to use."""


class WeightsError(MobilenetsError):
    """A weights file that is missing, corrupt or does not fit the requested model."""

"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class RD2TError(Exception):
    """Base class: the message is one line naming what went wrong and where."""


class InputError(RD2TError):
    """A file, folder or dataset layout that cannot be used (names the path and the problem)."""


class CheckpointError(RD2TError):
    """A checkpoint that is missing, truncated or from an incompatible version."""


class WeightsError(RD2TError):
    """Teacher weights that cannot be obtained or do not match the architecture."""


class OutputError(RD2TError):
    """An output location that cannot be written (names the path and the problem)."""


class ConfigError(RD2TError):
    """An option or config value outside what is allowed (names the option and the allowed values)."""

"""Exception types: every error a user can cause is an MtlibError that names what to fix."""


class MtlibError(Exception):
    """Base class for errors raised by mtlib."""


class DataError(MtlibError, ValueError):
    """A data source is missing, misaligned or unreadable."""


class ConfigError(MtlibError, ValueError):
    """A parameter or profile value is unknown, mistyped or impossible."""


class TrainingError(MtlibError, RuntimeError):
    """Training stopped: non-finite loss, missing checkpoint, and the like."""

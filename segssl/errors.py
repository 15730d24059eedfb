"""Exceptions a user can act on.

Every error raised on purpose by segssl derives from ``SegsslError`` so the command-line tools
can print its message alone (no traceback): the message names the file or config key at fault.
"""


class SegsslError(Exception):
    """Base class: something the user can fix (config, data, environment)."""


class ConfigError(SegsslError):
    """A config file, key or value is wrong."""


class DataError(SegsslError):
    """A data file or folder is missing, unreadable or inconsistent."""


class RegistryError(SegsslError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

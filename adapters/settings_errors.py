"""The error a bad setting raises, in its own module so that parsers kept beside their adapters can raise it."""

from __future__ import annotations


class SettingsError(ValueError):
    """A configuration value outside its accepted range; the message names the variable."""

"""Errors the user can fix. The CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


class WeightsError(UserError):
    """A weights spec, file or state dict that cannot be used."""

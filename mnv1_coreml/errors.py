"""Errors the user can fix. The CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


def one_line(message: object, limit: int | None = None) -> str:
    """An exception (or any text) as one line: whitespace collapsed, optionally cut to ``limit``.

    The one place that turns library and third-party messages into what the CLI prints.
    """
    if isinstance(message, BaseException):
        text = " ".join(str(message).split()) or type(message).__name__
    else:
        text = " ".join(str(message).split())
    return text if limit is None else text[:limit]


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


class WeightsError(UserError):
    """A weights spec, file or state dict that cannot be used."""


class OutputExistsError(UserError):
    """The output is already there and replacing it was not asked for (``force=True``).

    The message is the library's ("... already exists"); the CLI adds its ``--force`` hint.
    """


class InvalidValueError(UserError, ValueError):
    """A value outside what the model supports (alpha, resolution...).

    Also a ValueError, for callers that treat it as one; the CLI reports it as one line.
    """

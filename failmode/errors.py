"""Errors a user sees as one line: the CLI prints their message and exits non-zero, with no traceback."""

from __future__ import annotations


class FailmodeError(Exception):
    """A problem with the user's input or environment, reported as one line (exit code 1)."""

    exit_code = 1


class UsageError(FailmodeError):
    """Bad command-line usage or an invalid argument value (exit code 2)."""

    exit_code = 2


class LoadError(FailmodeError):
    """A model, dataset or file could not be loaded; the message says what and how to point at a local copy."""


class ValidationError(FailmodeError):
    """A data file (vocabulary, manifest, dataset folder, sample) is malformed; the message names it."""


class BadImageError(ValidationError):
    """An image that cannot be decoded; the message names its source and index or file.

    Raised in a data-loader worker, torch re-raises it in the main process with the worker's traceback as the
    message: only the original one line is kept.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = [line for line in message.strip().splitlines() if line.strip()][-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)

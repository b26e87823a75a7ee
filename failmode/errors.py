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

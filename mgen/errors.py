"""Exceptions that the CLI turns into one line on stderr and exit status 2."""

from __future__ import annotations


class MgenError(Exception):
    """Base class of every error mgen raises on purpose."""


class UserError(MgenError, ValueError):
    """Bad input from the user (arguments, files, names). The CLI prints it and exits with 2."""


class WeightsError(UserError):
    """Weights that are missing, corrupt, refused by the safe loader, or meant for another config."""

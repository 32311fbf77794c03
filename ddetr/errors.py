"""Every mistake a user can make, as one family of exceptions.

A :class:`DdetrError` means "the input is wrong, here is what to change": a config key, a
checkpoint that does not fit, an unreadable image, data that contradicts the config. Its
message names the file, key or shape and is meant to be read on its own, so every tool
prints it as one line and exits non-zero (:func:`ddetr.cli.entry_point`); anything else
that escapes a tool is a bug and keeps its traceback.

Each kind also derives from the built-in exception it used to be, so ``except ValueError``
and friends written against earlier versions still catch it. This module imports nothing
of ddetr (and nothing but the standard library), so every layer can raise these.
"""

__all__ = ['DdetrError', 'ConfigError', 'DataError', 'CheckpointError',
           'UntrustedCheckpointError', 'ImageLoadError', 'PreflightError', 'ConversionError']


class DdetrError(Exception):
    """A user's mistake, reported in one line. ``stage`` says when it was found, for the
    tools' message (``train.py: error (before training): ...``); empty means "at once"."""

    stage = ''


class ConfigError(DdetrError, ValueError):
    """A config or command line that does not build: a misspelt, missing or contradictory
    key, a ``type`` no registry has, an override that would be silently ignored."""


class DataError(DdetrError, OSError):
    """Data the config points to is missing or contradicts it (an annotation file that is
    not there, classes the annotations do not have)."""


class CheckpointError(DdetrError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names
    the file."""


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint needs a Python type outside the safe loader's allow-list to load."""


class ImageLoadError(DdetrError, OSError):
    """An image file is missing, empty or cannot be decoded; the message names it."""


class PreflightError(DdetrError, RuntimeError):
    """A config or data mistake found by the checks before the first training iteration
    (:class:`ddetr.engine.hooks.PreflightHook`)."""

    stage = 'before training'


class ConversionError(DdetrError):
    """A checkpoint of another implementation cannot be converted into ddetr's names."""

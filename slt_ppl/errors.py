"""Exceptions and warnings raised by slt_ppl.

Every error names the site, shape or setting at fault. They all derive from :class:`SLTError`, so
a caller can catch everything the library raises on purpose with one ``except SLTError``; anything
else escaping from slt_ppl is a bug. ``docs/troubleshooting.md`` maps each class to its causes and
fixes.
"""

from __future__ import annotations


class SLTError(Exception):
    """Base class of every error slt_ppl raises on purpose."""


class ModelError(SLTError, ValueError):
    """The model cannot be localized: discrete latent sites, no observed site, bad log-densities."""


class DataError(SLTError, ValueError):
    """The data are unusable: non-finite values, mismatched leading lengths, wrong dtype, empty."""


class CenterError(SLTError, ValueError):
    """The center w* misses or adds a site, has a wrong shape, or holds non-finite values."""


class SettingError(SLTError, ValueError):
    """A sampler or estimator setting is out of range (batch_size > n, negative step size, ...)."""


class ResultError(SLTError, ValueError):
    """A result lacks what an estimator needs (e.g. spectral metrics of a run without draws)."""


class DivergenceError(SLTError, RuntimeError):
    """Every chain diverged (non-finite or exploding loss): nothing is left to estimate from."""


class SLTWarning(UserWarning):
    """Base class of slt_ppl warnings."""


class DivergenceWarning(SLTWarning):
    """Some chains diverged and were dropped from the estimate (the result names them)."""


class SuspiciousCenterWarning(SLTWarning):
    """The center does not look like a local minimum (large gradient, negative LLC)."""


class DataWarning(SLTWarning):
    """The data are usable but look unintended (integer values fed to a continuous likelihood)."""


class HealthWarning(SLTWarning):
    """A check failed (R-hat, ESS, acceptance, trend, unstable ε): the estimate is unreliable."""

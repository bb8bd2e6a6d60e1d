"""Sampling: the compiled chain loop, step-size tuning and the result format."""

from slt_ppl.sampling.api import sample

__all__ = ["sample"]

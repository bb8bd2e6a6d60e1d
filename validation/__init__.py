"""Validation suites: compositions of slt_ppl's public functions, runnable by users."""

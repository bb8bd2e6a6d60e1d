"""Validation suites: slt_ppl's estimates against theory and against MALA (and, in
:mod:`validation.effective_dimension_suite`, 2sED against training error).

Each suite in :mod:`validation.suites` is a plain function that composes only public functions
(``slt_ppl.localize / sample / llc / compare`` and ``models.*``) and returns an ``xr.Dataset`` whose
attrs carry the suite's pass/fail verdict; :mod:`validation.report` writes Markdown, PNG and NetCDF;
:func:`validation.cli.main_validate` is the ``slt-ppl validate`` command.
"""

"""mkdocs hook: show the docstrings' Sphinx cross-reference roles as plain code.

The library's docstrings use Sphinx roles (:func:`slt_ppl.llc`, :class:`~slt_ppl.SLTError`), which
mkdocstrings renders literally as ":func:" followed by code. This drops the role name and Sphinx's
"~" (last-component) marker. Written here because it is a two-line rewrite of the rendered HTML; the
docstrings stay valid for Sphinx and IDEs.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|const):(<code>)~?")


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(r"\1", html)

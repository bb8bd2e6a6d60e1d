"""The documentation site builds offline with warnings as errors, runs every executed tutorial, and
renders in a browser.

The build (`mkdocs build --strict -d site`, into the repository's git-ignored ``site/``) executes the
tutorials' code blocks (markdown-exec): a tutorial whose code raises fails the build, so this test is
also the tutorials' test. Cost: ≈ 50 single-core seconds, most of it the tutorials' sampling.
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site"
EXECUTED_TUTORIALS = (
    "llc",
    "two-temperature",
    "refined-llc",
    "bif",
    "wbic",
    "waic",
    "two-scale-ed",
    "spectral",
)
PENDING_TUTORIALS: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def site() -> Path:
    pytest.importorskip("mkdocs", reason="the dev extra installs mkdocs-material")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
        "NO_MKDOCS_2_WARNING": "1",
        "JAX_PLATFORMS": "cpu",
    }
    # pytest -n 2 may run this module's tests on both workers: one build per test run, guarded by
    # a file lock and a marker named by xdist's run id (two concurrent --clean builds of one
    # directory break each other)
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    with open(ROOT / ".site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = SITE / f".built-{run_id}"
        if not marker.exists():
            _build(env)
            marker.touch()
    return SITE


def _build(env: dict[str, str]) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(SITE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # the site's CI budget (issue 17) is ≈ 120 single-core seconds (measured 55 s before the
    # refined-LLC tutorial, 129 s with it on a loaded machine); reported, not asserted: speed is
    # measured in benchmarks/, never by a timed unit test
    print(f"docs build: {cpu:.0f} CPU seconds")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def test_key_pages_exist(site):
    for page in (
        "index.html",
        "getting-started/index.html",
        "concepts/index.html",
        "validation/index.html",
        "troubleshooting/index.html",
        "comparison/index.html",
        "reference/estimators/index.html",
        *(f"tutorials/{t}/index.html" for t in EXECUTED_TUTORIALS + PENDING_TUTORIALS),
    ):
        assert (site / page).is_file(), page


def test_tutorials_show_their_build_time_output(site):
    for name in EXECUTED_TUTORIALS:
        html = _text(site / "tutorials" / name / "index.html")
        # markdown-exec output: a result block and an inline SVG plot drawn by matplotlib at build
        # time (matplotlib signs its SVGs with a <dc:creator> block; the theme's icons have none)
        assert "Traceback" not in html, name
        assert "<dc:creator>" in html and "Matplotlib" in html, f"{name}: no plot"
    llc = _text(site / "tutorials/llc/index.html")
    assert re.search(r"verdict: (healthy|unhealthy)", llc)
    assert re.search(r"λ̂ = \d+\.\d{3} ± \d+\.\d{3}", llc)
    for name in PENDING_TUTORIALS:
        assert "Pending merge" in _text(site / "tutorials" / name / "index.html")


def test_api_reference_shows_docstrings(site):
    html = _text(site / "reference/estimators/index.html")
    for needle in ("waic", "W_n = T_n + (β/n)·V_n", "two_scale_ed", "Watanabe 2013"):
        assert needle in html, needle
    assert ":func:" not in html  # Sphinx roles rewritten to code (docs/_hooks/sphinx_roles.py)


def test_no_network_assets(site):
    # offline build: no Google Fonts and no CDN scripts in the pages
    html = _text(site / "index.html")
    assert "fonts.googleapis.com" not in html and "cdn.jsdelivr.net" not in html


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_screenshot_shows_rendered_page(site, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium on PATH (apt-get install chromium)")
    shot = site / "screenshot-llc.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path}",
            "--window-size=1280,1600",
            f"--screenshot={shot}",
            (site / "tutorials/llc/index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(shot))[..., :3]
    assert pixels.shape[:2] == (1600, 1280)
    # a rendered page: the theme's coloured header bar at the top, text (dark pixels) and a white
    # background; a blank or error page has one colour (variance ≈ 0)
    assert pixels.std() > 0.1
    header = pixels[:40].reshape(-1, 3).mean(axis=0)
    assert header[2] > header[0] + 0.2, header  # indigo: blue well above red
    dark = (pixels.mean(axis=2) < 0.3).mean()
    assert 0.005 < dark < 0.5, dark

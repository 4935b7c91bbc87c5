"""The documentation site, built once per test session with ``mkdocs build --strict``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_site(site_dir: Path) -> subprocess.CompletedProcess:
    """Run ``mkdocs build --strict`` from the repository root into ``site_dir``."""
    mkdocs = shutil.which("mkdocs")
    argv = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    return subprocess.run(
        [*argv, "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The built site's directory; fails the requesting test if the strict build fails."""
    site = tmp_path_factory.mktemp("docs") / "site"
    done = build_site(site)
    assert done.returncode == 0, done.stderr[-3000:]
    return site

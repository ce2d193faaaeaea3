"""The docs site builds in strict mode (a broken link, a missing anchor or a page left out of the
nav fails), and its reference page is the one the code generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_reference_page_is_generated_from_the_code():
    generated = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_reference.py")], capture_output=True, text=True, check=True).stdout
    assert (ROOT / "docs" / "reference.md").read_text() == generated, "run: python docs/gen_reference.py > docs/reference.md"


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "index.html").exists() and (tmp_path / "site" / "tp" / "index.html").exists()

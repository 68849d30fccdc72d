"""The documentation a newcomer reads: the README stays short, and the site in docs/ builds with
`mkdocs build --strict` (a broken link, a page missing from the navigation or a generated page
that fails to render fails the suite); its spec reference is generated from the code, so every
family, gate and data source of the tables appears in it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tasks.core.families import FAMILIES
from tasks.core.gates import MODEL_GATES
from tasks.datasets.sources import SOURCES
from tests.servers import BIN

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_site_builds_strict_with_every_table_in_the_spec_reference(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reference = (tmp_path / "site" / "reference" / "spec" / "index.html").read_text()
    for name in [*FAMILIES, *MODEL_GATES, *SOURCES]:
        assert f"<code>{name}</code>" in reference, name
    assert "spec.gates" in reference and "max_ece" in reference

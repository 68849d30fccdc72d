"""The unchanged-model check against a real (SQLite) MLflow registry: only the champion's own
data, spec and code count as the same model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, load_spec
from tasks.datasets.data import DatasetRef
from tasks.modeling.training import spec_fingerprint
from tasks.modeling.unchanged import unchanged
from tasks.registry import mlflow_store, model_registry, tracking
from tests.conftest import write_spec

DATA = DatasetRef(uri="file:///data/source.parquet", sha256="a" * 64, rows=10, positives=1)


def _champion(settings: Settings, spec: ModelSpec, **tags: str) -> None:
    client = mlflow_store.client(settings)
    client.create_registered_model(spec.name)
    version = client.create_model_version(spec.name, source="file:///m", tags=tags)
    client.set_registered_model_alias(spec.name, model_registry.CHAMPION, version.version)


@pytest.fixture
def spec(tmp_path: Path) -> ModelSpec:
    return load_spec(write_spec(tmp_path))


def _built_from(spec: ModelSpec, source: str = DATA.sha256, code: str = "") -> dict[str, str]:
    return {
        tracking.TAG_SOURCE: source,
        tracking.TAG_SPEC: spec_fingerprint(spec),
        tracking.TAG_CODE: code or tracking.code_version(),
    }


def test_the_champions_own_inputs_are_unchanged(settings: Settings, spec: ModelSpec) -> None:
    _champion(settings, spec, **_built_from(spec))
    same = unchanged(settings, spec, DATA)
    assert same is not None and same.version == 1
    assert "champion v1 already is this model" in same.sentence()
    assert "--force" in same.sentence()


@pytest.mark.parametrize("differs", ["data", "spec", "code"])
def test_any_difference_releases(
    settings: Settings, spec: ModelSpec, tmp_path: Path, differs: str
) -> None:
    built = _built_from(spec)
    _champion(settings, spec, **built)
    data, current = DATA, spec
    if differs == "data":
        data = DATA.model_copy(update={"sha256": "b" * 64})
    elif differs == "spec":
        current = load_spec(write_spec(tmp_path, **{"thresholds.roc_auc": 0.5}))
    else:
        mlflow_store.client(settings).set_model_version_tag(
            spec.name, "1", tracking.TAG_CODE, "0" * 40
        )
    assert unchanged(settings, current, data) is None


def test_no_champion_or_no_recorded_source_releases(settings: Settings, spec: ModelSpec) -> None:
    assert unchanged(settings, spec, DATA) is None
    built = _built_from(spec)
    del built[tracking.TAG_SOURCE]  # a champion trained before the source was recorded
    _champion(settings, spec, **built)
    assert unchanged(settings, spec, DATA) is None


def test_unknown_code_is_never_the_same_code(
    settings: Settings, spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    _champion(settings, spec, **_built_from(spec, code=tracking.UNKNOWN_CODE))
    monkeypatch.setattr(tracking, "code_version", lambda: tracking.UNKNOWN_CODE)
    assert unchanged(settings, spec, DATA) is None


def test_the_code_version_names_uncommitted_edits(tmp_path: Path) -> None:
    assert tracking.code_version(tmp_path) == tracking.UNKNOWN_CODE  # not a checkout

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    assert tracking.code_version(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    first_edit = tracking.code_version(tmp_path)
    (tmp_path / "code.py").write_text("x = 3\n")
    second_edit = tracking.code_version(tmp_path)
    assert first_edit.startswith(f"{head}-dirty-") and second_edit.startswith(f"{head}-dirty-")
    assert first_edit != second_edit
    (tmp_path / "code.py").write_text("x = 2\n")
    assert tracking.code_version(tmp_path) == first_edit

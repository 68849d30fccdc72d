from pathlib import Path

import pytest
import yaml

from tasks.core.names import (
    MAX_NAME_LENGTH,
    canary_name,
    candidate_name,
    candidate_version,
    name_problem,
)
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, SpecError, load_spec


def test_settings_defaults_live_under_home(settings: Settings, home: Path) -> None:
    assert settings.home == home.resolve()
    assert settings.tracking_uri == f"sqlite:///{home.resolve()}/mlflow.db"
    assert settings.repository == str(home.resolve() / "model_repository")
    assert settings.embedded_triton


def test_settings_read_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    monkeypatch.setenv("CONVEYOR_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("CONVEYOR_TRITON_HTTP_PORT", "8123")
    settings = Settings()
    assert settings.repository == "/srv/models"
    assert settings.triton_http_port == 8123
    assert settings.mlflow_db == tmp_path / "mlflow.db"


def test_triton_url_from_the_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_URL", "triton:8000")
    assert Settings().triton_http_url == "triton:8000"
    assert not Settings().embedded_triton
    monkeypatch.setenv("CONVEYOR_TRITON_HTTP_URL", "other:8000")
    assert Settings().triton_http_url == "other:8000"


def test_default_spec_is_a_rare_class_fraud_model() -> None:
    spec = load_spec(DEFAULT_SPEC)
    assert spec.name == "fraud-detector"
    assert 0.01 <= spec.data.positive_rate <= 0.03
    assert {"amount", "hour_of_day", "is_international", "channel"} <= set(spec.feature_names)
    assert spec.n_classes == 2


def test_unknown_spec_path_names_the_file_and_the_choices(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "nope.yaml")
    message = str(err.value)
    assert "nope.yaml" in message
    assert "fraud-detector.yaml" in message


def test_spec_missing_a_field_names_the_field(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    del raw["target"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"`target` is missing"):
        load_spec(path)


def test_spec_with_a_misspelt_field_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["serving"]["max_batchsize"] = 8
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"serving.max_batchsize` is not a known field"):
        load_spec(path)


def test_category_feature_without_categories_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["features"][-1].pop("categories")
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="list its `categories`"):
        load_spec(path)


def test_spec_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(path)


def test_result_storage_is_a_directory_or_a_prefect_block(
    monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path
) -> None:
    assert Settings().results == home.resolve() / "results"
    monkeypatch.setenv("CONVEYOR_RESULT_STORAGE", "s3-bucket/conveyor-results")
    assert Settings().results == "s3-bucket/conveyor-results"
    monkeypatch.setenv("CONVEYOR_RESULT_STORAGE", str(tmp_path / "shared" / "results"))
    assert Settings().results == tmp_path / "shared" / "results"


def _written(tmp_path: Path, raw: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a reviewer reading the first would be misled."""
    line = "  tolerance: 1.0e-5          # max |served - offline| probability"
    text = DEFAULT_SPEC.read_text().replace(line, f"{line}\n  tolerance: 0.5", 1)
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    first = text.splitlines().index(line) + 1
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert f"`tolerance` is written twice in one mapping (lines {first} and {first + 1})" in str(
        err.value
    )


def test_a_check_across_fields_reads_as_a_sentence(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["features"].append(dict(raw["features"][0]))
    with pytest.raises(SpecError) as err:
        load_spec(_written(tmp_path, raw))
    message = str(err.value)
    assert "  - features listed twice: ['amount']" in message
    assert "(top level)" not in message and "Value error" not in message


@pytest.mark.parametrize("model", ["fraud-detector", "wine-named", "a", "x" * MAX_NAME_LENGTH])
def test_served_names_of_candidates_and_canaries_are_never_model_names(model: str) -> None:
    assert name_problem(model) is None
    for served in (candidate_name(model, 2), candidate_name(model, 10**9), canary_name(model)):
        assert name_problem(served) is not None, served
    # A model named as another model's candidate once was is a model, and no candidate of it.
    lookalike = f"{model}-candidate-v2"[:MAX_NAME_LENGTH]
    assert candidate_version(model, lookalike) is None
    assert candidate_name(model, 2) != lookalike


def test_a_model_name_longer_than_every_store_takes_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["name"] = "n" * (MAX_NAME_LENGTH + 1)
    with pytest.raises(SpecError) as err:
        load_spec(_written(tmp_path, raw))
    assert f"is {MAX_NAME_LENGTH + 1} characters; a model name has at most 63" in str(err.value)
    raw["name"] = "wine.canary"
    with pytest.raises(SpecError, match="no dot"):
        load_spec(_written(tmp_path, raw))

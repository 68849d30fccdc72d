"""Every kind of tabular model through the same line, against the embedded Triton: tables of the
shapes our users bring (a small 3-class table, a 10-class table with 64 features, a regression
with a continuous target) go from `conveyor init` to a served champion without edits, answer
like their own ONNX file over HTTP and gRPC, leave `conveyor doctor` clean, compare a second
release with the champion on their task's metric, and are covered by the drift check. Bad input
for a task is one paragraph and exit 2, with nothing registered and the champion still served."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from flows.release import ReleaseResult, release_flow
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, load_spec
from tasks.datasets.data import load_dataset, to_features
from tasks.datasets.schema_gen import init_spec
from tasks.modeling.onnx import predict_outputs
from tasks.ops.drift import check_drift
from tasks.registry import model_registry, tracking
from tasks.registry.mlflow_store import client
from tasks.serving import triton_client, triton_server
from tests.faults import assert_one_paragraph


def three_class(rows: int = 450, seed: int = 0) -> pd.DataFrame:
    """Iris-like: four measurements, three species as text."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    x = rng.normal(size=(rows, 4)) + y[:, None] * np.array([1.6, 0.9, -1.1, 0.4])
    frame = pd.DataFrame(x, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    return frame.assign(species=np.array(["setosa", "versicolor", "virginica"])[y])


def ten_class(rows: int = 1800, seed: int = 1) -> pd.DataFrame:
    """Digits-like: 64 pixel intensities 0..16, ten digits as integers."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, rows)
    prototypes = rng.integers(0, 17, (10, 64))
    pixels = np.clip(prototypes[y] + rng.normal(0, 5, (rows, 64)).round(), 0, 16).astype(int)
    return pd.DataFrame(pixels, columns=[f"pixel_{i}" for i in range(64)]).assign(digit=y)


def regression(rows: int = 600, seed: int = 2) -> pd.DataFrame:
    """Diabetes-like: ten standardised measurements, a continuous progression score."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 10))
    score = 150 + x @ rng.normal(0, 20, 10) + rng.normal(0, 30, rows)
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(10)]).assign(progression=score)


TABLES = {"species": three_class, "digits": ten_class, "progression": regression}
TARGETS = {"species": "species", "digits": "digit", "progression": "progression"}


@dataclass
class Kinds:
    settings: Settings
    env: dict[str, str]
    specs: dict[str, ModelSpec]
    paths: dict[str, Path]
    first: dict[str, ReleaseResult]
    second: dict[str, ReleaseResult]


def quicker(path: Path) -> None:
    """The spec `init` wrote, with a shorter search and smoke test (the tables stay as they are)."""
    raw = yaml.safe_load(path.read_text())
    raw["search"] |= {"trials": 2, "parallel": 2}
    raw["smoke"] |= {"rows": 100, "latency_requests": 50, "load_requests": 200}
    path.write_text(yaml.safe_dump(raw))


@pytest.fixture(scope="module")
def kinds(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kinds]:
    base = tmp_path_factory.mktemp("kinds")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        env.setenv("CONVEYOR_SPEC_DIR", str(base / "specs"))
        settings = Settings()
        paths: dict[str, Path] = {}
        for name, make in TABLES.items():
            source = base / f"{name}.csv"
            make().to_csv(source, index=False)
            result = init_spec(str(source), TARGETS[name], name, base / "specs")
            paths[name] = Path(result.path)
            quicker(paths[name])
        try:
            first = {name: release_flow(str(path)) for name, path in paths.items()}
            second = {name: release_flow(str(path), force=True) for name, path in paths.items()}
            yield Kinds(
                settings,
                {"CONVEYOR_HOME": str(base / "state"), "CONVEYOR_SPEC_DIR": str(base / "specs")},
                {name: load_spec(path) for name, path in paths.items()},
                paths,
                first,  # type: ignore[arg-type]
                second,  # type: ignore[arg-type]
            )
        finally:
            triton_server.stop(settings)


def test_init_chose_each_task_from_the_target(kinds: Kinds) -> None:
    specs = kinds.specs
    assert specs["species"].task is Task.multiclass
    assert specs["species"].target.classes == ["setosa", "versicolor", "virginica"]
    assert specs["digits"].task is Task.multiclass and specs["digits"].n_classes == 10
    assert specs["digits"].n_features == 64
    assert specs["progression"].task is Task.regression


@pytest.mark.parametrize("name", list(TABLES))
def test_served_answers_equal_the_offline_onnx_ones(kinds: Kinds, name: str) -> None:
    spec, settings = kinds.specs[name], kinds.settings
    champion = model_registry.alias_version(settings, name, model_registry.CHAMPION)
    assert champion == 2
    ref = model_registry.version_ref(settings, name, champion)
    onnx_bytes = tracking.read_artifact(settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}")
    holdout = kinds.second[name].holdout
    rows = to_features(load_dataset(holdout.uri), spec)[: spec.serving.max_batch_size]
    offline = predict_outputs(onnx_bytes, rows)
    endpoint = triton_server.endpoint(settings)
    # Unversioned, as callers ask: the champion answers.
    http = triton_client.outputs_http(triton_client.http_client(endpoint), name, rows)
    grpc = triton_client.outputs_grpc(triton_client.grpc_client(endpoint), name, rows)
    for served in (http, grpc):
        assert set(served) == set(offline)
        for output, values in offline.items():
            np.testing.assert_allclose(served[output], values, rtol=0, atol=1e-5)
    assert triton_client.loaded_versions(endpoint, name) == [1, 2]
    config = triton_client.control_client(endpoint).config(name)
    if spec.task is Task.regression:
        assert [o["name"] for o in config["output"]] == ["prediction"]  # type: ignore[index]
    else:
        parameters = config["parameters"]
        names = yaml.safe_load(parameters["class_names"]["string_value"])  # type: ignore[index]
        assert names == spec.class_names


def test_doctor_is_clean_for_every_kind(kinds: Kinds) -> None:
    done = CliRunner().invoke(app, ["doctor"], env=kinds.env)  # the whole fleet of three
    assert done.exit_code == 0, done.output
    assert "clean: digits, progression, species" in " ".join(done.output.split())


@pytest.mark.parametrize(
    ("name", "metric", "higher"),
    [("species", "accuracy", True), ("digits", "accuracy", True), ("progression", "rmse", False)],
)
def test_the_second_release_compares_on_the_tasks_metric(
    kinds: Kinds, name: str, metric: str, higher: bool
) -> None:
    comparison = kinds.second[name].validation.comparison
    assert comparison is not None and comparison.champion_version == 1
    assert (comparison.metric, comparison.higher_is_better) == (metric, higher)
    assert comparison.resamples == 1000 and comparison.ci_low <= comparison.ci_high
    # Same data, same seed: the challenger is the champion again, and non-inferior to it.
    assert comparison.difference == pytest.approx(0.0, abs=1e-12) and comparison.passed
    run = client(kinds.settings).get_run(kinds.second[name].run_id)
    assert run.data.tags[tracking.TAG_TASK] == kinds.specs[name].task.value
    assert metric in run.data.metrics


@pytest.mark.parametrize(
    ("name", "column"), [("species", "predicted_class"), ("progression", "prediction")]
)
def test_the_drift_check_compares_the_models_answers(kinds: Kinds, name: str, column: str) -> None:
    report = check_drift(kinds.settings, kinds.specs[name])
    assert report.champion == 2 and report.prediction.column == column
    assert not report.drifted  # the same table on both sides


def test_bad_input_for_a_task_is_one_paragraph_and_registers_nothing(
    kinds: Kinds, tmp_path: Path
) -> None:
    """A regression whose newest extract has non-numbers in its target: the data contract stops
    it before training; nothing is registered and the champion still answers."""
    spec_path = kinds.paths["progression"]
    broken = tmp_path / "progression.csv"
    regression().assign(progression="n/a").to_csv(broken, index=False)
    raw = yaml.safe_load(spec_path.read_text())
    raw["data"]["source"] = str(broken)
    bad_spec = tmp_path / "progression.yaml"
    bad_spec.write_text(yaml.safe_dump(raw))
    before = model_registry.alias_version(kinds.settings, "progression", model_registry.CHAMPION)
    versions = len(client(kinds.settings).search_model_versions("name='progression'"))
    done = CliRunner().invoke(app, ["run", "--spec", str(bad_spec)], env=kinds.env)
    assert done.exit_code == 2, done.output
    assert_one_paragraph(done.output)
    assert "target is numeric (a regression)" in done.output
    assert len(client(kinds.settings).search_model_versions("name='progression'")) == versions
    assert model_registry.alias_version(kinds.settings, "progression", "champion") == before
    endpoint = triton_server.endpoint(kinds.settings)
    assert triton_client.loaded_versions(endpoint, "progression") == [1, 2]


def test_triton_up_after_down_serves_every_released_model(kinds: Kinds) -> None:
    """`conveyor triton up` (what the smoke test's hint says after `triton down`) brings back
    every model's champion and previous, not only the default spec's (#42). Last in the module:
    it restarts the server the others read."""
    runner = CliRunner()
    assert runner.invoke(app, ["triton", "down"], env=kinds.env).output.strip() == "stopped"
    up = runner.invoke(app, ["triton", "up"], env=kinds.env)
    assert up.exit_code == 0, up.output
    endpoint = triton_server.endpoint(kinds.settings)
    for name in TABLES:
        assert f"{name}: versions [1, 2]" in up.output
        assert triton_client.loaded_versions(endpoint, name) == [1, 2]
    doctor = runner.invoke(app, ["doctor"], env=kinds.env)
    assert doctor.exit_code == 0, doctor.output

"""The calibration gate (a gate of the table) in real releases on the embedded Triton: a
classifier whose probabilities miss the spec's ceiling is refused by `conveyor run` in one
paragraph with its interval, nothing registered and the champion still served; a release the
gate passes carries its section in the validation artifact and the model card, beside the
champion's calibration, and its figure in the MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from flows.release import release_flow
from tasks.core.settings import Settings
from tasks.registry import model_registry, tracking
from tasks.registry.mlflow_store import client
from tasks.serving import triton_client, triton_server
from tests.conftest import write_spec
from tests.faults import assert_one_paragraph


def _with_gate(path: Path, section: dict[str, object]) -> Path:
    raw = yaml.safe_load(path.read_text())
    raw["gates"] = {"calibration": section}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_calibration_refuses_with_its_interval_and_passes_beside_the_champion(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    env = {"CONVEYOR_HOME": str(tmp_path / "state")}
    settings = Settings()
    try:
        spec_path = write_spec(tmp_path)
        first = release_flow(str(spec_path))
        name = first.model
        assert first.validation.gates == []  # off unless the spec sets it

        # A ceiling no model of this size meets: refused before anything is registered.
        _with_gate(spec_path, {"max_ece": 0.001})
        done = CliRunner().invoke(app, ["run", "--spec", str(spec_path)], env=env)
        assert done.exit_code == 2, done.output
        assert_one_paragraph(done.output)
        said = " ".join(done.output.split())
        assert "calibration: expected calibration error" in said
        assert "interval [" in said and "wholly above the ceiling 0.001" in said
        assert "Nothing was registered" in said
        versions = client(settings).search_model_versions(f"name='{name}'")
        assert [int(v.version) for v in versions] == [1]
        assert model_registry.alias_version(settings, name, model_registry.CHAMPION) == 1
        assert triton_client.loaded_versions(triton_server.endpoint(settings), name) == [1]

        # A ceiling it meets, and a margin beside champion v1: released, and said so.
        _with_gate(spec_path, {"max_ece": 0.5, "margin": 0.5})
        second = release_flow(str(spec_path))
        [report] = second.validation.gates
        assert report.gate == "calibration" and report.passed
        assert "ECE minus champion v1's" in "\n".join(report.lines)
        card = tracking.read_artifact(settings, second.model_card).decode()
        assert "## Calibration" in card
        run = client(settings).get_run(second.run_id).data.metrics
        assert run["calibration_ece"] == pytest.approx(report.metrics["calibration_ece"])
        assert model_registry.alias_version(settings, name, model_registry.CHAMPION) == 2
    finally:
        triton_server.stop(settings)

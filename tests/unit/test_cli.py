from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.spec import DEFAULT_SPEC


def flat(output: str) -> str:
    return " ".join(output.split())


def test_unknown_spec_path_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--spec", str(tmp_path / "missing.yaml")], env={"CONVEYOR_HOME": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert "model spec not found" in flat(result.output)
    assert "missing.yaml" in flat(result.output)
    assert "Traceback" not in result.output


def test_spec_missing_a_field_names_it(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    del raw["estimator"]
    spec = tmp_path / "no-estimator.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        app, ["train", "--spec", str(spec)], env={"CONVEYOR_HOME": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert "`estimator` is missing" in flat(result.output)


def test_spec_from_the_environment_is_used(tmp_path: Path) -> None:
    env = {"CONVEYOR_HOME": str(tmp_path), "CONVEYOR_SPEC": str(tmp_path / "env-spec.yaml")}
    result = CliRunner().invoke(app, ["run"], env=env)
    assert result.exit_code == 2
    assert "env-spec.yaml" in flat(result.output)


def test_smoke_without_a_champion_says_what_to_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["smoke"], env={"CONVEYOR_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "has no champion yet; run `conveyor run` first" in flat(result.output)


def test_drift_without_a_champion_says_what_to_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["drift"], env={"CONVEYOR_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "has no champion yet; run `conveyor run` first" in flat(result.output)

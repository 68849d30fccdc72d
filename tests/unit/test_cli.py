from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli.main import app
from tasks.core.names import MODEL_NAME
from tasks.core.spec import DEFAULT_SPEC


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


def test_a_name_pattern_in_an_error_is_printed_as_written(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["name"] = "Fraud Detector"
    spec = tmp_path / "bad-name.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        app, ["run", "--spec", str(spec)], env={"CONVEYOR_HOME": str(tmp_path)}
    )
    assert result.exit_code == 2
    # rich read `[a-z0-9]` as markup and printed '^*$'.
    assert MODEL_NAME in flat(result.output)


def test_init_refuses_a_name_that_is_a_path(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,y\n1,0\n2,1\n")
    fleet = tmp_path / "fleet"
    env = {"CONVEYOR_HOME": str(tmp_path / "s"), "CONVEYOR_SPEC_DIR": str(fleet)}
    result = CliRunner().invoke(
        app, ["init", "--from", str(data), "--target", "y", "--name", "../../../x"], env=env
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "is not a model name" in flat(result.output)
    assert not list(tmp_path.rglob("x.yaml"))


def test_on_off_flags_show_no_value_in_the_help() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if "--" in line}
    for flag in ("--force", "--no-wait", "--all"):
        assert "<bool>" not in lines[flag], lines[flag]
    assert "<path>" in lines["--spec"]  # options that take a value still say which


def test_a_busy_machine_that_starts_prefect_late_is_one_paragraph(tmp_path: Path) -> None:
    """Prefect's temporary API given 1 s (a busy machine's start-up, forced): one paragraph
    saying what to change, exit 2, no traceback, and no run in MLflow."""
    import subprocess
    import sys

    from tests.servers import clean_env

    env = clean_env(
        CONVEYOR_HOME=str(tmp_path / "state"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
    )
    conveyor = Path(sys.executable).parent / "conveyor"
    spec = tmp_path / "churn.yaml"
    spec.write_text((DEFAULT_SPEC.parent / "churn.yaml").read_text())
    done = subprocess.run(
        [str(conveyor), "train", "--spec", str(spec)], env=env, capture_output=True, text=True
    )
    output = flat(done.stdout + done.stderr)
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert "did not answer within 1 s: the machine is too busy" in output
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=<seconds>" in output
    assert not (tmp_path / "state" / "mlartifacts").exists()

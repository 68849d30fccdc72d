from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tasks.core.names import MODEL_NAME
from tasks.core.spec import DEFAULT_SPEC
from tests.conftest import ROOT


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


def _every_command(group: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, command in getattr(group, "commands", {}).items():
        yield from _every_command(command, [*path, name])


def test_no_help_screen_shows_a_value_for_help() -> None:
    """typer 0.29 prints `--help <bool>` on every screen (#42): none does, group or command."""
    import typer

    screens = list(_every_command(typer.main.get_command(app), []))
    assert ["triton", "up"] in screens and ["run"] in screens
    for path in screens:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        [line] = [x for x in result.output.splitlines() if "--help" in x]
        assert "<bool>" not in line, (path, line)


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


READ_ONLY = (["status"], ["status", "--json"], ["doctor"], ["triton", "status"])


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_read_only_commands_never_import_prefect(argv: list[str], tmp_path: Path) -> None:
    """Importing Prefect costs about a second and starting its API many more: a command that
    only reads (#42) does neither, for the shipped fleet's five models."""
    import subprocess
    import sys

    from tests.servers import clean_env

    env = clean_env(CONVEYOR_HOME=str(tmp_path / "state"), PREFECT_HOME=str(tmp_path / "p"))
    code = (
        "import sys\nfrom cli.main import app\ntry:\n    app(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "print('imported:', sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')[:3])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "imported: []", done.stdout[-2000:]


def test_outcomes_without_an_outcomes_section_says_nothing_is_configured(tmp_path: Path) -> None:
    """It said "no labels", as if labels were late, for a spec that names none (#42)."""
    raw = yaml.safe_load((DEFAULT_SPEC.parent / "merchant-category.yaml").read_text())
    raw.pop("outcomes")
    spec = tmp_path / "merchant-category.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        app, ["outcomes", "--spec", str(spec)], env={"CONVEYOR_HOME": str(tmp_path)}
    )
    assert result.exit_code == 2
    said = flat(result.output)
    assert "nothing configured: merchant-category's spec" in said
    assert "Traceback" not in said


def test_a_library_warning_goes_to_the_log_file_not_the_console(tmp_path: Path, capsys) -> None:
    """A resume printed MLflow's UserWarnings among conveyor's own lines (#42)."""
    import logging
    import warnings

    from cli.app import CONSOLE_LOGGERS, route_logs

    log = tmp_path / "conveyor.log"
    try:
        # Whatever filters imported libraries installed: the routing is what is tested. An
        # earlier test's command left logging "capturing", its hook undone by pytest: reset.
        logging.captureWarnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            route_logs(log, verbose=False)
            warnings.warn("a library's hint", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        for name in CONSOLE_LOGGERS:
            for handler in list(logging.getLogger(name).handlers):
                if handler.get_name() == "conveyor-file":
                    logging.getLogger(name).removeHandler(handler)
                    handler.close()
    assert "a library's hint" not in capsys.readouterr().err
    assert "a library's hint" in log.read_text()

"""Outcome monitoring against real MLflow runs and the embedded Triton's ONNX files: the churn
model released twice, then an outcome check on healthy labels, one on labels whose relation to
the features the generator's knob has broken (degraded, with its interval, while the drift check
stays quiet), and a drift check; `conveyor report churn` draws all five on one axis and the last
check's MLflow run holds the same page. A batch too small is "too small", not healthy; a labels
table of another schema is one paragraph and exit 2. (The event reaching the retrain deployment
on a real server and worker: `test_deployments.py`.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from flows.drift import drift_check_flow
from flows.outcomes import outcome_check_flow
from flows.release import release_flow
from tasks.core.settings import Settings
from tasks.datasets.synthetic import generate
from tasks.ops import history
from tasks.ops.drift import DriftReport
from tasks.ops.outcomes import OutcomeReport
from tasks.registry import model_registry, tracking
from tasks.serving import triton_client, triton_server
from tests.conftest import ROOT
from tests.conftest import write_spec as small_spec
from tests.faults import assert_one_paragraph

NAME = "churn"


@dataclass
class Monitored:
    settings: Settings
    env: dict[str, str]
    base: Path
    healthy: OutcomeReport
    degraded: OutcomeReport
    drift: DriftReport


def write_spec(path: Path, **outcomes: object) -> Path:
    """The shipped churn spec made small (`tests.conftest.write_spec`: 6,000 rows), at `path`;
    `outcomes`: its outcomes section's overrides."""
    overrides = {f"outcomes.{key}": value for key, value in outcomes.items()}
    return small_spec(path.parent, ROOT / "deployments/models/churn.yaml", **overrides).rename(path)


@pytest.fixture(scope="module")
def monitored(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    base = tmp_path_factory.mktemp("outcomes")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        env.setenv("CONVEYOR_SPEC_DIR", str(base / "specs"))
        (base / "specs").mkdir()
        spec = str(write_spec(base / "specs" / f"{NAME}.yaml"))
        settings = Settings()
        try:
            release_flow(spec)
            release_flow(spec, force=True)
            healthy = outcome_check_flow(spec)
            degraded = outcome_check_flow(str(write_spec(base / "degraded.yaml", degradation=0.8)))
            drift = drift_check_flow(spec)
            yield Monitored(
                settings,
                {"CONVEYOR_HOME": str(base / "state"), "CONVEYOR_SPEC_DIR": str(base / "specs")},
                base,
                healthy,
                degraded,
                drift,
            )
        finally:
            triton_server.stop(settings)


def test_a_healthy_batch_is_healthy_and_a_degraded_one_is_caught_by_its_interval(
    monitored: Monitored,
) -> None:
    healthy, degraded = monitored.healthy, monitored.degraded
    assert healthy.champion == degraded.champion == 2 and healthy.metric == "pr_auc"
    assert healthy.verdict == "healthy" and healthy.realised is not None
    assert healthy.realised.high >= healthy.released - healthy.tolerance
    assert degraded.verdict == "degraded" and degraded.realised is not None
    assert degraded.realised.high < degraded.released - degraded.tolerance
    assert degraded.rows == healthy.rows == 6000
    # drift stays quiet: the knob moved no feature
    assert not monitored.drift.drifted
    # the estimate before labels is reported beside, never a verdict of its own
    assert healthy.estimated is not None and healthy.estimated.metric == "pr_auc"
    assert abs(healthy.estimated.value - healthy.realised.value) < 0.1
    run = tracking.run_tags(monitored.settings, degraded.run_id)
    assert run["conveyor.outcome.verdict"] == "degraded"


def test_report_draws_both_releases_and_all_three_checks(monitored: Monitored) -> None:
    out = monitored.base / "churn-history.html"
    done = CliRunner().invoke(app, ["report", NAME, "--out", str(out)], env=monitored.env)
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "2 releases, 2 outcome checks, 2 estimates, 1 drift check" in text
    page = out.read_text()
    rows = page.split("<tr><td>")[1:]
    kinds = [row.split("</td><td>")[1] for row in rows]
    assert sorted(kinds) == sorted(["release"] * 2 + ["outcome"] * 2 + ["estimate"] * 2 + ["drift"])
    assert "degraded" in page and "healthy" in page and "data:image/png;base64," in page
    # the last check (the drift check) keeps the same page with its run
    run_id = monitored.drift.report_uri.removeprefix("runs:/").split("/", 1)[0]
    kept = tracking.read_artifact(
        monitored.settings, f"runs:/{run_id}/check/{history.HISTORY_HTML}"
    ).decode()
    assert kept.count("<tr><td>") == len(rows)


def test_too_few_labels_are_too_small_not_healthy_and_emit_nothing(monitored: Monitored) -> None:
    report = outcome_check_flow(str(write_spec(monitored.base / "few.yaml", min_rows=50_000)))
    assert report.verdict == "too small" and report.realised is None and not report.degraded
    assert "too small" in report.line()


def test_labels_of_another_schema_are_one_paragraph_and_the_champion_stays(
    monitored: Monitored, tmp_path: Path
) -> None:
    frame = generate("synthetic:churn", 800, 9, 0.2, 0.0).assign(customer=range(800))
    frame.to_csv(tmp_path / "scored.csv", index=False)
    frame[["customer", "churned"]].assign(note="x").to_csv(tmp_path / "labels.csv", index=False)
    spec = write_spec(tmp_path / "labels.yaml", source=None)
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["source"] = str(tmp_path / "scored.csv")
    raw["outcomes"] |= {"labels": str(tmp_path / "labels.csv"), "key": "customer"}
    spec.write_text(yaml.safe_dump(raw))
    done = CliRunner().invoke(app, ["outcomes", "--spec", str(spec)], env=monitored.env)
    assert done.exit_code == 2, done.output
    assert_one_paragraph(done.output)
    assert "expected exactly ['churned', 'customer']" in " ".join(done.output.split())
    settings = monitored.settings
    assert model_registry.alias_version(settings, NAME, model_registry.CHAMPION) == 2
    assert triton_client.loaded_versions(triton_server.endpoint(settings), NAME) == [1, 2]

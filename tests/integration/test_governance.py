"""Champion/challenger gate, idempotent registration, rollback and alias history, on the real
MLflow store and the real embedded Triton. One state directory, releases in sequence:

  v1 weak → v2 strong (better: promoted) → weak again (worse: rejected, never registered)
  → strong again under `superior` (equal: rejected) → strong again under `non_inferior`
  (equal within the margin: promoted as v3) → rollback to v2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from cli.main import app
from flows.release import ReleaseResult, release_flow
from flows.rollback import rollback_flow
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.datasets.data import load_dataset, to_features
from tasks.modeling.evaluation import GateError
from tasks.modeling.onnx import predict
from tasks.registry import alias_history, model_registry, tracking
from tasks.registry.model_registry import PromotionResult
from tasks.serving import triton_client, triton_server
from tests.conftest import write_spec

WEAK = {
    "estimator.params": {"n_estimators": 2, "max_depth": 2},
    "search.space": {},
    "thresholds.roc_auc": 0.5,
    "thresholds.pr_auc": 0.02,
}


@dataclass
class Story:
    settings: Settings
    name: str
    weak: ReleaseResult
    strong: ReleaseResult
    worse: GateError
    equal_superior: GateError
    equal_non_inferior: ReleaseResult
    rollback: PromotionResult
    served_after_rollback: list[int]


@pytest.fixture(scope="module")
def story(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    base = tmp_path_factory.mktemp("governance")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        settings = Settings()
        weak = write_spec(base, **WEAK)
        strong = write_spec(base, **{"validation.rule": "non_inferior"})
        strong_superior = write_spec(base, **{"validation.rule": "superior"})
        try:
            first = release_flow(str(weak))
            second = release_flow(str(strong))
            with pytest.raises(GateError) as worse:
                release_flow(str(weak))
            with pytest.raises(GateError) as equal:
                release_flow(str(strong_superior))
            # The champion's own spec and data again: forced, or nothing would be registered.
            third = release_flow(str(strong), force=True)
            back = rollback_flow(str(strong), reason="fraud losses up after v3")
            served = triton_client.loaded_versions(triton_server.endpoint(settings), first.model)
            yield Story(
                settings, first.model, first, second, worse.value, equal.value, third, back, served
            )
        finally:
            triton_server.stop(settings)


def versions(story: Story) -> list[int]:
    found = MlflowClient(story.settings.tracking_uri).search_model_versions(f"name='{story.name}'")
    return sorted(int(v.version) for v in found)


def test_better_challenger_is_promoted(story: Story) -> None:
    assert story.weak.version == 1
    assert story.weak.validation.comparison is None  # first release: thresholds decide
    comparison = story.strong.validation.comparison
    assert comparison is not None
    assert comparison.champion_version == 1
    assert comparison.ci_low > 0
    assert story.strong.promotion.champion == 2


def test_worse_challenger_is_rejected_and_never_registered(story: Story) -> None:
    message = str(story.worse)
    assert "not non-inferior" not in message  # the message carries numbers, not a slogan
    assert "champion v2" in message
    assert "difference -" in message
    assert "Nothing was registered" in message
    # versions 1, 2 and (later) 3 only: the two rejected challengers got no version
    assert versions(story) == [1, 2, 3]


def test_rejection_verdict_is_kept_on_the_mlflow_run(story: Story) -> None:
    client = MlflowClient(story.settings.tracking_uri)
    rejected = [
        r
        for r in client.search_runs(
            [client.get_experiment_by_name(story.name).experiment_id],
            "tags.`conveyor.validation` LIKE 'rejected%'",
        )
    ]
    assert len(rejected) == 2
    assert all(r.data.tags["conveyor.validation.champion_version"] == "2" for r in rejected)


def test_equal_challenger_follows_the_configured_rule(story: Story) -> None:
    assert "rule superior" in str(story.equal_superior)
    comparison = story.equal_non_inferior.validation.comparison
    assert comparison is not None
    assert comparison.difference == pytest.approx(0.0, abs=1e-12)  # same data, seed and spec
    assert comparison.rule == "non_inferior"
    assert story.equal_non_inferior.version == 3


def test_registering_the_same_run_twice_gives_one_version(story: Story) -> None:
    run_id = story.equal_non_inferior.run_id
    candidate = tracking.CandidateRun(
        run_id=run_id,
        model_uri=model_registry.version_ref(story.settings, story.name, 3).model_uri,
        experiment_id="",
    )
    again = model_registry.register(story.settings, story.name, candidate, {})
    assert again.version == 3
    assert versions(story) == [1, 2, 3]


def test_rollback_serves_the_previous_version(story: Story) -> None:
    assert story.rollback.champion == 2
    assert model_registry.alias_version(story.settings, story.name, model_registry.CHAMPION) == 2
    assert model_registry.alias_version(story.settings, story.name, model_registry.PREVIOUS) is None
    assert story.served_after_rollback == [2]
    endpoint = triton_server.endpoint(story.settings)
    spec = load_spec(write_spec(Path(story.settings.home).parent))
    features = to_features(load_dataset(story.strong.holdout.uri), spec)[:200]
    v2 = (Path(story.settings.repository) / story.name / "2" / "model.onnx").read_bytes()
    served_labels, served_proba = triton_client.infer_http(
        triton_client.http_client(endpoint), story.name, features
    )
    offline_labels, offline_proba = predict(v2, features)
    np.testing.assert_array_equal(served_labels, offline_labels)
    np.testing.assert_allclose(served_proba, offline_proba, atol=1e-6)
    tag = MlflowClient(story.settings.tracking_uri).get_model_version(story.name, "3").tags
    assert tag[model_registry.TAG_RELEASE] == "rolled back: fraud losses up after v3"


def test_history_shows_promotion_and_rollback(story: Story) -> None:
    moves = [
        (m.alias, m.from_version, m.to_version)
        for m in alias_history.moves(story.settings, story.name)
    ]
    assert ("champion", 2, 3) in moves
    assert ("champion", 3, 2) in moves
    assert moves.index(("champion", 2, 3)) < moves.index(("champion", 3, 2))
    rollback = next(
        m
        for m in alias_history.moves(story.settings, story.name)
        if m.to_version == 2 and m.from_version == 3
    )
    assert rollback.reason == "rollback: fraud losses up after v3"
    assert rollback.actor
    env = {"CONVEYOR_HOME": str(story.settings.home)}
    table = CliRunner().invoke(app, ["history", story.name], env=env)
    assert table.exit_code == 0, table.output
    assert "alias history: fraud-detector" in table.output
    lines = CliRunner().invoke(app, ["history", story.name, "--json"], env=env).output.splitlines()
    printed = [alias_history.AliasMove.model_validate_json(line) for line in lines]
    assert printed == alias_history.moves(story.settings, story.name)


def test_model_card_is_logged_for_each_release(story: Story) -> None:
    card = tracking.read_artifact(story.settings, story.strong.model_card).decode()
    assert card.startswith(f"# Model card: {story.name} version 2")
    assert story.strong.train.sha256 in card
    assert "champion v1" in card
    assert "Approval: not required by the spec" in card

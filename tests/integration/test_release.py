"""The real release flow against the embedded Triton and a SQLite MLflow store.

Three releases share one state directory: two that succeed, then one whose smoke test fails on
its latency budget (a real failure of the real server, not an injected one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.release import ReleaseResult, release_flow
from flows.rollback import rollback_flow
from tasks.core import names
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, load_spec
from tasks.core.storage import open_store, read_verified, repository_versions
from tasks.datasets.data import load_dataset, to_features
from tasks.modeling.onnx import predict, sha256
from tasks.modeling.unchanged import UnchangedModel
from tasks.ops.doctor.repairs import check_and_repair
from tasks.registry import model_registry, tracking
from tasks.serving import model_config, rollout, triton_client, triton_server
from tasks.serving.smoke import SmokeTestError
from tasks.serving.traffic import Traffic
from tests.conftest import write_spec


@dataclass
class Releases:
    settings: Settings
    spec: ModelSpec
    first: ReleaseResult
    second: ReleaseResult
    failure: Exception
    unchanged: object  # the second release's data and spec again, unforced
    lookalike: str  # another model, named as the second release's candidate once was


@pytest.fixture(scope="module")
def releases(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Releases]:
    base = tmp_path_factory.mktemp("release")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        settings = Settings()
        spec_path = write_spec(base)
        sweep = {"max_queue_delays_us": [0, 500], "instance_counts": [1, 2], "requests": 200}
        tuned_path = write_spec(base, **{"serving.tuning": {"enabled": True, **sweep}})
        slow_path = write_spec(base, **{"smoke.p99_budget_ms": 0.001})
        try:
            first = release_flow(str(tuned_path))
            # Another model on the same Triton whose name is the second release's candidate
            # under the old `-candidate-v<N>` naming (#42): that release replaced it, then
            # unloaded it, and doctor called it an orphan candidate.
            lookalike = f"{first.model}-candidate-v2"
            files = read_verified(open_store(settings.repository), f"{first.model}/1")
            triton_client.load_candidate(
                settings,
                triton_server.endpoint(settings),
                load_spec(spec_path),
                1,
                files,
                name=lookalike,
            )
            second = release_flow(str(spec_path))
            with pytest.raises(SmokeTestError) as failed:
                release_flow(str(slow_path))
            unchanged = release_flow(str(spec_path))
            yield Releases(
                settings, load_spec(spec_path), first, second, failed.value, unchanged, lookalike
            )
        finally:
            triton_server.stop(settings)


def aliases(settings: Settings, name: str) -> dict[str, int | None]:
    return {
        alias: model_registry.alias_version(settings, name, alias)
        for alias in (model_registry.CHAMPION, model_registry.PREVIOUS, model_registry.CHALLENGER)
    }


def test_first_release_becomes_champion(releases: Releases) -> None:
    assert releases.first.version == 1
    assert releases.first.promotion.champion == 1
    assert releases.first.promotion.previous is None
    assert releases.first.smoke.passed
    assert releases.first.smoke.rows == releases.spec.smoke.rows
    rejected = releases.first.smoke.malformed_rejected
    assert set(rejected) == {"wrong shape", "wrong dtype", "NaN feature", "oversized batch"}
    assert "Expected [-1,10], got [1,11]" in rejected["wrong shape"]
    assert "NaN or infinity in 1 row(s)" in rejected["NaN feature"]
    assert "batch-size must be <= 256" in rejected["oversized batch"]
    load = releases.first.smoke.load
    assert (load.concurrency, load.requests, load.errors) == (8, 400, 0)
    assert load.throughput_rps > 0
    assert load.p99_ms <= releases.spec.smoke.p99_budget_ms


def test_first_release_went_live_with_the_measured_configuration(releases: Releases) -> None:
    tuning = releases.first.export.tuning
    assert [t.key for t in tuning.trials] == ["q0_i1", "q0_i2", "q500_i1", "q500_i2"]
    assert all(t.load.requests == 200 and t.load.throughput_rps > 0 for t in tuning.trials)
    chosen = (tuning.chosen.max_queue_delay_microseconds, tuning.chosen.instance_count)
    best = max(
        (t for t in tuning.trials if t.load.p99_ms <= releases.spec.smoke.p99_budget_ms),
        key=lambda t: t.load.throughput_rps,
    )
    assert chosen == (best.max_queue_delay_microseconds, best.instance_count)
    tagged = rollout.serving_for(releases.settings, releases.spec, 1)
    assert (tagged.max_queue_delay_microseconds, tagged.instance_count) == chosen
    run = MlflowClient(releases.settings.tracking_uri).get_run(releases.first.run_id)
    assert {f"tuning_{t.key}_rps" for t in tuning.trials} <= set(run.data.metrics)
    assert run.data.params["serving_instance_count"] == str(chosen[1])
    # The first release had no callers yet: it went live without a probe.
    assert releases.first.swap.steady is None and releases.first.swap.after == [1]


def test_second_release_moves_champion_and_previous(releases: Releases) -> None:
    assert releases.second.version == 2
    assert releases.second.promotion.previous == 1
    swap = releases.second.swap
    assert (swap.before, swap.after, swap.errors) == ([1], [1, 2], [])
    assert swap.steady is not None and swap.during is not None
    assert swap.during.requests > 0 and swap.p99_ratio is not None
    assert releases.second.smoke.served_as == "fraud-detector.candidate-v2"
    assert aliases(releases.settings, releases.spec.name) == {
        "champion": 2,
        "previous": 1,
        "challenger": None,
    }


def test_a_model_named_like_a_candidate_is_untouched_by_releases(releases: Releases) -> None:
    """Every release since the look-alike was loaded served, smoke-tested and unloaded its own
    candidate: the look-alike still serves its one version, and doctor finds nothing."""
    endpoint = triton_server.endpoint(releases.settings)
    assert triton_client.loaded_versions(endpoint, releases.lookalike) == [1]
    assert releases.second.smoke.served_as != releases.lookalike
    report = check_and_repair(releases.settings, [releases.spec.name], False)
    assert report.clean, report.problems


def test_triton_serves_champion_with_offline_predictions(releases: Releases) -> None:
    endpoint = triton_server.endpoint(releases.settings)
    # previous stays loaded for an instant rollback; unversioned requests reach the newest.
    assert triton_client.loaded_versions(endpoint, releases.spec.name) == [1, 2]
    holdout = load_dataset(releases.second.holdout.uri)
    features = to_features(holdout, releases.spec)[:500]
    onnx_bytes = (
        Path(releases.settings.repository) / releases.spec.name / "2" / "model.onnx"
    ).read_bytes()
    offline_labels, offline_proba = predict(onnx_bytes, features)
    client = triton_client.http_client(endpoint)
    served = [
        triton_client.infer_http(client, releases.spec.name, features[i : i + 100])
        for i in range(0, 500, 100)
    ]
    np.testing.assert_array_equal(np.concatenate([s[0] for s in served]), offline_labels)
    np.testing.assert_allclose(np.concatenate([s[1] for s in served]), offline_proba, atol=1e-6)


def test_versions_carry_lineage_tags(releases: Releases) -> None:
    client = MlflowClient(releases.settings.tracking_uri)
    version = client.get_model_version(releases.spec.name, "2")
    onnx_file = Path(releases.settings.repository) / releases.spec.name / "2" / "model.onnx"
    assert version.tags[model_registry.TAG_ONNX] == sha256(onnx_file.read_bytes())
    assert version.tags[tracking.TAG_DATA] == releases.second.train.sha256
    assert version.tags[tracking.TAG_CODE]
    assert version.tags[tracking.TAG_FLOW_RUN]
    assert version.tags[model_registry.TAG_RELEASE] == "promoted"
    # Host paths stay the run's record; a version's page shows no machine path (#42).
    assert not any(str(releases.settings.home) in v for v in version.tags.values())
    run = client.get_run(version.run_id).data.tags
    assert {k: run[k] for k in tracking.RUN_ONLY_TAGS if k in run} == {
        tracking.TAG_HOLDOUT_URI: releases.second.holdout.uri,
        tracking.TAG_TRAIN_URI: releases.second.train.uri,
        # A synthetic source has no read to pin (a file, a table has: `test_sources`).
    }
    # Same data and spec twice: the same fingerprint.
    first = client.get_model_version(releases.spec.name, "1")
    assert first.tags[tracking.TAG_DATA] == version.tags[tracking.TAG_DATA]


def test_the_champions_data_spec_and_code_again_release_nothing(releases: Releases) -> None:
    same = releases.unchanged
    assert isinstance(same, UnchangedModel)
    assert (same.model, same.version) == (releases.spec.name, 2)
    client = MlflowClient(releases.settings.tracking_uri)
    champion = client.get_model_version(releases.spec.name, "2")
    assert same.fingerprint.source_sha256 == champion.tags[tracking.TAG_SOURCE]
    assert same.fingerprint.code_version == champion.tags[tracking.TAG_CODE]
    versions = client.search_model_versions(f"name='{releases.spec.name}'")
    # v3 is the failed smoke test's; the unchanged release took no number.
    assert max(int(v.version) for v in versions) == 3
    assert model_registry.alias_version(releases.settings, releases.spec.name, "champion") == 2


def test_the_registered_model_loads_with_its_stated_requirements(releases: Releases) -> None:
    uri = f"models:/{releases.spec.name}@champion"
    mlflow.set_tracking_uri(releases.settings.tracking_uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    names = {line.split("==")[0] for line in requirements}
    # Exactly what loading needs, pinned; none of what the training process happened to import.
    assert set(tracking.MODEL_REQUIREMENTS) <= names <= {*tracking.MODEL_REQUIREMENTS, "mlflow"}
    assert all("==" in line for line in requirements)
    holdout = load_dataset(releases.second.holdout.uri)
    features = to_features(holdout, releases.spec)[:50]
    scores = np.asarray(mlflow.pyfunc.load_model(uri).predict(features))
    _, served_proba = predict(
        (Path(releases.settings.repository) / releases.spec.name / "2" / "model.onnx").read_bytes(),
        features,
    )
    np.testing.assert_allclose(scores, served_proba, atol=1e-5)


def test_failed_smoke_test_leaves_champion_and_serving_untouched(releases: Releases) -> None:
    settings, name = releases.settings, releases.spec.name
    assert "p99 latency" in str(releases.failure)
    assert "exceeds the budget 0.001 ms (best of 3 runs)" in str(releases.failure)
    assert aliases(settings, name) == {"champion": 2, "previous": 1, "challenger": None}
    failed = MlflowClient(settings.tracking_uri).get_model_version(name, "3")
    assert failed.tags[model_registry.TAG_RELEASE].startswith("failed: SmokeTestError")
    endpoint = triton_server.endpoint(settings)
    assert triton_client.loaded_versions(endpoint, name) == [1, 2]
    # Refused at a gate, its step results went with it (a resume would meet the same verdict);
    # the completed and unchanged releases pruned theirs (#42).
    assert not [p for p in settings.results.glob("*") if p.is_dir()]
    assert not triton_client.grpc_client(endpoint).is_model_ready(names.candidate_name(name, 3))
    assert not (Path(settings.repository) / name / "3").exists()
    live = model_config.parse_config(
        (Path(settings.repository) / name / "config.pbtxt").read_text()
    )
    assert list(live.version_policy.specific.versions) == [1, 2]
    assert not list((Path(settings.repository) / name).glob(".staging-*"))


def loads_logged(settings: Settings, name: str, version: int) -> int:
    state = triton_server.status(settings)
    assert state is not None
    log = Path(state.log_path).read_text(errors="replace")
    return log.count(f"successfully loaded '{name}' version {version}")


def test_swap_and_rollback_under_load_fail_no_request(releases: Releases, tmp_path: Path) -> None:
    """Callers keep sending unversioned requests over HTTP and gRPC through a whole release (v4)
    and a rollback; runs last in this module, since it moves the champion."""
    settings, name = releases.settings, releases.spec.name
    endpoint = triton_server.endpoint(settings)
    rows = to_features(load_dataset(releases.second.holdout.uri), releases.spec)[:500]
    # The smoke test's latency budget is not under test here; the extra callers would eat it.
    spec_path = write_spec(tmp_path, **{"smoke.p99_budget_ms": 60_000.0})
    with Traffic(endpoint, name, rows, clients=4) as traffic:
        traffic.wait_for(100)
        release = release_flow(str(spec_path))
        loads_before = loads_logged(settings, name, 2)
        rollback_flow(str(spec_path), reason="swap test")
        rolled_back = time.time()
        traffic.wait_for(len(traffic.samples()) + 500)
        traffic.wait_for(5_000, timeout_s=120)
    samples = traffic.samples()
    assert release.version == 4
    assert len(samples) >= 5_000
    assert [s.error for s in samples if s.version is None] == []
    # The candidate answered no caller before its swap started (smoke test, sweep included).
    swapped_at = release.swap.started_at.timestamp()
    assert min(s.at for s in samples if s.version == 4) >= swapped_at
    assert {s.version for s in samples if s.at < swapped_at} == {2}
    # After the rollback only v2 answers, and v2 was not reloaded for it: it stayed loaded.
    assert {s.version for s in samples if s.at > rolled_back} == {2}
    assert loads_logged(settings, name, 2) == loads_before
    assert triton_client.loaded_versions(endpoint, name) == [2]


def test_retention_keeps_champion_previous_and_the_newest(
    releases: Releases, tmp_path: Path
) -> None:
    """After the rollback above (runs after it): a release keeping none of the newest besides
    champion and previous deletes every other version's files; MLflow keeps the versions."""
    settings, name = releases.settings, releases.spec.name
    store = open_store(settings.repository)
    before = repository_versions(store, name)
    release = release_flow(str(write_spec(tmp_path, **{"retention.keep_last": 0})))
    champion, previous = release.version, release.promotion.previous
    assert previous is not None
    assert repository_versions(store, name) == sorted({champion, previous})
    assert release.retention.removed == sorted(set(before) - {previous})
    assert release.retention.removed  # there was something to remove
    for version in release.retention.removed:
        retired = model_registry.version_tag(settings, name, version, model_registry.TAG_RETIRED)
        assert retired is not None and "retention keeps champion, previous" in retired
    # Serving and the aliases are untouched by it: champion and previous stay loaded.
    assert triton_client.loaded_versions(triton_server.endpoint(settings), name) == sorted(
        {champion, previous}
    )
    assert model_registry.version_tag(settings, name, champion, model_registry.TAG_RETIRED) is None

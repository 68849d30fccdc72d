"""A Triton model repository on S3 (moto's server on 127.0.0.1), read directly by the embedded
tritonserver in explicit mode: publish, verify, serve, reload, and refuse what does not verify."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import numpy as np
import pytest

from flows.release import release_flow
from tasks import triton, triton_server
from tasks.data import to_features, to_target
from tasks.onnx import convert, predict
from tasks.registry import ModelRef
from tasks.settings import Settings
from tasks.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.storage import IntegrityError, S3Store, verify_dir
from tasks.synthetic import generate_transactions
from tasks.training import build_pipeline
from tests.conftest import write_spec
from tests.servers import moto_s3


@dataclass
class Repo:
    settings: Settings
    store: S3Store
    spec: ModelSpec
    models: list[bytes]
    features: np.ndarray


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    base = tmp_path_factory.mktemp("s3repo")
    with moto_s3(base) as endpoint, pytest.MonkeyPatch.context() as env:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            env.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="models")
        settings = Settings(home=base / "state", model_repository="s3://models/triton/")
        spec = load_spec(DEFAULT_SPEC)
        frame = generate_transactions(3000, seed=8, fraud_rate=0.05)
        features, target = to_features(frame, spec), to_target(frame, spec)
        models = [
            convert(
                build_pipeline(spec, {"n_estimators": n}).fit(features, target), spec.n_features
            )
            for n in (5, 9, 13)
        ]
        triton_server.start(settings)
        try:
            yield Repo(settings, S3Store(settings.repository), spec, models, features)
        finally:
            triton_server.stop(settings)


def served(repo: Repo, version: int, model: str = "") -> tuple[np.ndarray, np.ndarray]:
    client = triton.grpc_client(triton_server.endpoint(repo.settings))
    name = model or repo.spec.name
    return triton.infer_grpc(client, name, repo.features[:128], str(version))


def test_triton_reads_the_repository_from_s3(repo: Repo) -> None:
    state = triton_server.status(repo.settings)
    assert state is not None
    assert state.repository == "s3://models/triton"
    assert triton_server.triton_repository(state.repository).startswith("s3://http://127.0.0.1:")


def test_published_version_is_verified_and_served(repo: Repo) -> None:
    triton.publish_version(
        repo.store, repo.settings.repository, repo.spec, 1, repo.models[0], "python"
    )
    assert set(verify_dir(repo.store, f"{repo.spec.name}/1")) == {"model.onnx", "model.py"}
    assert not repo.store.list_files(".staging")
    ref = ModelRef(name=repo.spec.name, version=1, run_id="r1", model_uri="m")
    candidate = triton.serve_candidate(repo.settings, repo.spec, ref)
    assert (candidate.model, candidate.versions) == (f"{repo.spec.name}-candidate-v1", [1])
    labels, proba = served(repo, 1, candidate.model)
    offline_labels, offline_proba = predict(repo.models[0], repo.features[:128])
    np.testing.assert_array_equal(labels, offline_labels)
    np.testing.assert_allclose(proba, offline_proba, atol=1e-6)


def test_a_new_version_is_picked_up_by_an_explicit_load(repo: Repo) -> None:
    triton.publish_version(
        repo.store, repo.settings.repository, repo.spec, 2, repo.models[1], "python"
    )
    endpoint = triton_server.endpoint(repo.settings)
    triton.load_versions(endpoint, repo.spec, "python", [1, 2], timeout_s=60)
    assert triton.loaded_versions(endpoint, repo.spec.name) == [1, 2]
    np.testing.assert_allclose(
        served(repo, 2)[1], predict(repo.models[1], repo.features[:128])[1], atol=1e-6
    )


def test_tampered_object_is_refused_before_load(repo: Repo) -> None:
    triton.publish_version(
        repo.store, repo.settings.repository, repo.spec, 3, repo.models[2], "python"
    )
    repo.store.write_file(f"{repo.spec.name}/3/model.onnx", repo.models[0])  # a different model
    ref = ModelRef(name=repo.spec.name, version=3, run_id="r3", model_uri="m")
    with pytest.raises(IntegrityError, match=r"model\.onnx sha256"):
        triton.serve_candidate(repo.settings, repo.spec, ref)
    assert 3 not in triton.loaded_versions(triton_server.endpoint(repo.settings), repo.spec.name)


def test_version_without_manifest_counts_as_incomplete(repo: Repo) -> None:
    repo.store.write_file(f"{repo.spec.name}/4/model.onnx", repo.models[0])
    with pytest.raises(IntegrityError, match=r"has no manifest\.json"):
        verify_dir(repo.store, f"{repo.spec.name}/4")
    repo.store.remove_dir(f"{repo.spec.name}/4")
    assert not repo.store.exists(f"{repo.spec.name}/4")


def test_a_release_publishes_to_s3_and_serves_from_it(
    repo: Repo, prefect_api, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(repo.settings.home))
    monkeypatch.setenv("CONVEYOR_MODEL_REPOSITORY", repo.settings.repository)
    result = release_flow(str(write_spec(tmp_path, name="card-fraud-s3")))
    assert result.version == 1
    assert result.export.published.repository == "s3://models/triton"
    assert set(verify_dir(repo.store, "card-fraud-s3/1")) == {"model.onnx", "model.py"}
    assert triton.loaded_versions(triton_server.endpoint(repo.settings), "card-fraud-s3") == [1]
    live_config = triton.parse_config(repo.store.read_file("card-fraud-s3/config.pbtxt").decode())
    assert list(live_config.version_policy.specific.versions) == [1]
    assert result.smoke.passed

"""A Triton model repository on S3 (moto's server on 127.0.0.1), read directly by the embedded
tritonserver in explicit mode: publish, verify, serve, reload, and refuse what does not verify;
then S3 failing under a release (a proxy in front of moto that the tests break on cue)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

import boto3
import numpy as np
import pytest

from flows.release import release_flow
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.core.storage import IntegrityError, S3Store, verify_dir
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import convert, predict
from tasks.modeling.training import build_pipeline
from tasks.registry.model_registry import ModelRef
from tasks.serving import model_config, rollout, triton_client, triton_server
from tests.conftest import write_spec
from tests.faults import (
    SMALL_RELEASE,
    Site,
    assert_invariant,
    assert_one_paragraph,
    next_version,
    ok,
)
from tests.servers import FaultProxy, Request, clean_env, moto_s3


@dataclass
class Repo:
    settings: Settings
    store: S3Store
    spec: ModelSpec
    models: list[bytes]
    features: np.ndarray
    proxy: FaultProxy  # every client here, Triton included, reaches S3 through it


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    base = tmp_path_factory.mktemp("s3repo")
    with moto_s3(base) as endpoint, pytest.MonkeyPatch.context() as env:
        proxy = FaultProxy(endpoint)
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": proxy.url,
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
            store = S3Store(settings.repository)
            yield Repo(settings, store, spec, models, features, proxy)
        finally:
            triton_server.stop(settings)
            proxy.close()


def served(repo: Repo, version: int, model: str = "") -> tuple[np.ndarray, np.ndarray]:
    client = triton_client.grpc_client(triton_server.endpoint(repo.settings))
    name = model or repo.spec.name
    return triton_client.infer_grpc(client, name, repo.features[:128], str(version))


def test_triton_reads_the_repository_from_s3(repo: Repo) -> None:
    state = triton_server.status(repo.settings)
    assert state is not None
    assert state.repository == "s3://models/triton"
    assert triton_server.triton_repository(state.repository).startswith("s3://http://127.0.0.1:")


def test_published_version_is_verified_and_served(repo: Repo) -> None:
    rollout.publish_version(
        repo.store, repo.settings.repository, repo.spec, 1, repo.models[0], "python"
    )
    assert set(verify_dir(repo.store, f"{repo.spec.name}/1")) == {"model.onnx", "model.py"}
    assert not repo.store.list_files(".staging")
    ref = ModelRef(name=repo.spec.name, version=1, run_id="r1", model_uri="m")
    candidate = rollout.serve_candidate(repo.settings, repo.spec, ref)
    assert (candidate.model, candidate.versions) == (f"{repo.spec.name}.candidate-v1", [1])
    labels, proba = served(repo, 1, candidate.model)
    offline_labels, offline_proba = predict(repo.models[0], repo.features[:128])
    np.testing.assert_array_equal(labels, offline_labels)
    np.testing.assert_allclose(proba, offline_proba, atol=1e-6)


def test_a_new_version_is_picked_up_by_an_explicit_load(repo: Repo) -> None:
    rollout.publish_version(
        repo.store, repo.settings.repository, repo.spec, 2, repo.models[1], "python"
    )
    endpoint = triton_server.endpoint(repo.settings)
    triton_client.load_versions(endpoint, repo.spec, "python", [1, 2], timeout_s=60)
    assert triton_client.loaded_versions(endpoint, repo.spec.name) == [1, 2]
    np.testing.assert_allclose(
        served(repo, 2)[1], predict(repo.models[1], repo.features[:128])[1], atol=1e-6
    )


def test_tampered_object_is_refused_before_load(repo: Repo) -> None:
    rollout.publish_version(
        repo.store, repo.settings.repository, repo.spec, 3, repo.models[2], "python"
    )
    repo.store.write_file(f"{repo.spec.name}/3/model.onnx", repo.models[0])  # a different model
    ref = ModelRef(name=repo.spec.name, version=3, run_id="r3", model_uri="m")
    with pytest.raises(IntegrityError, match=r"model\.onnx sha256"):
        rollout.serve_candidate(repo.settings, repo.spec, ref)
    assert 3 not in triton_client.loaded_versions(
        triton_server.endpoint(repo.settings), repo.spec.name
    )


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
    assert triton_client.loaded_versions(
        triton_server.endpoint(repo.settings), "card-fraud-s3"
    ) == [1]
    live_config = model_config.parse_config(
        repo.store.read_file("card-fraud-s3/config.pbtxt").decode()
    )
    assert list(live_config.version_policy.specific.versions) == [1]
    assert result.smoke.passed


# --- S3 failing under a release ---------------------------------------------------------------


@pytest.fixture(scope="module")
def site(repo: Repo, prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """`conveyor run` processes on the module's S3 repository and Triton, with a champion."""
    from prefect.settings import PREFECT_API_URL

    base = tmp_path_factory.mktemp("s3-faults")
    spec_path = write_spec(
        base,
        name="s3-faults",
        **SMALL_RELEASE,
    )
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env = clean_env(
        CONVEYOR_HOME=str(repo.settings.home),
        CONVEYOR_MODEL_REPOSITORY=repo.settings.repository,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        **aws,
    )
    site = Site(base, repo.settings, spec_path, env)
    ok(site.release())
    return site


def test_s3_stopped_during_publish_withdraws_and_doctor_repairs_what_it_left(
    site: Site, repo: Repo
) -> None:
    """S3 goes away once the version's files are staged, as they are copied into place: the
    release exits 2 in one paragraph while Triton keeps serving the champion from memory; once
    S3 is back, `conveyor doctor --repair` removes the staged upload the release could not."""
    champion, new = site.champion(), next_version(site)
    into_place = f"/models/triton/{site.name}/{new}/"
    repo.proxy.down_on(lambda r: r.method == "PUT" and r.path.startswith(into_place))
    try:
        done = site.release()
        output = " ".join((done.stdout + done.stderr).split())
        assert repo.proxy.is_down, f"the publish never reached S3: {output[-2000:]}"
        assert done.returncode == 2, output[-4000:]
        assert_one_paragraph(output)
        assert "was withdrawn" in output and f"doctor {site.name} --repair" in output, output
        # The outage does not reach callers: the champion answers from Triton's memory.
        labels, _ = served(repo, champion or 0, site.name)
        assert len(labels) == 128
    finally:
        repo.proxy.restore()
    assert site.champion() == champion
    found = site.run("doctor", site.name)
    assert found.returncode != 0 and "staged" in found.stdout, found.stdout + found.stderr
    ok(site.run("doctor", site.name, "--repair"))
    assert not repo.store.list_files(".staging")
    assert_invariant(site)


def _tritons_read_of(prefix: str) -> Callable[[Request], bool]:
    def rule(request: Request) -> bool:
        # Triton's AWS SDK for C++, never conveyor's boto3; object reads and listings.
        return request.user_agent.startswith("aws-sdk-cpp") and prefix in unquote(request.path)

    return rule


def test_s3_refusing_tritons_load_of_the_new_version_keeps_the_champion(
    site: Site, repo: Repo
) -> None:
    """S3 refuses Triton (a rotated credential, a bucket policy) when the swap loads the new
    version from the repository: the release exits 2 in one paragraph, nothing moved."""
    champion, new = site.champion(), next_version(site)
    rule = _tritons_read_of(f"triton/{site.name}/{new}/")
    repo.proxy.refuse(rule)
    try:
        done = site.release()
    finally:
        repo.proxy.restore()
    output = " ".join((done.stdout + done.stderr).split())
    refused = [r for r in repo.proxy.seen if rule(r)]
    assert refused, "Triton never read the new version from S3"
    assert done.returncode == 2, output[-4000:]
    assert_one_paragraph(output)
    assert f"could not load {site.name}" in output, output[-2000:]
    assert site.champion() == champion
    assert_invariant(site)

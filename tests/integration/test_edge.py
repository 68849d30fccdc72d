"""The edge: a real nginx (infra/nginx/edge.conf) in front of two real Triton replicas, with TLS
from a self-signed certificate, three client keys and a per-client rate limit. Callers are
tritonclient over HTTP and gRPC, and plain urllib where the status code itself is the point."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from infra import edge
from tasks.core import credentials, names
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.core.storage import LocalStore, read_verified
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import INPUT, convert, predict
from tasks.modeling.training import build_pipeline
from tasks.ops.doctor.checks import examine
from tasks.ops.doctor.repairs import check_and_repair
from tasks.serving import edge_certificate, replicas, rollout, triton_client, triton_server
from tasks.serving.traffic import Traffic
from tasks.serving.triton_ports import HOST, Endpoint

RATE = 20  # requests/s per client: low, so a flood is easy to make and quick to see
BURST = 10


@dataclass
class EdgeSite:
    directory: Path
    members: list[Settings]
    keys: dict[str, str]
    tls: edge.Tls
    http_port: int
    grpc_port: int
    spec: ModelSpec
    onnx: bytes
    rows: np.ndarray

    def endpoint(self, tls: bool = True) -> Endpoint:
        return Endpoint(
            http=f"{HOST}:{self.http_port}",
            grpc=f"{HOST}:{self.grpc_port}",
            via_edge=True,
            tls_ca_file=str(self.tls.trusted) if tls else None,
        )

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls.trusted))

    def post(self, path: str, key: str | None, body: bytes = b"{}") -> tuple[int, str]:
        """One HTTPS request to the edge; (status, body)."""
        request = urllib.request.Request(f"https://{HOST}:{self.http_port}{path}", data=body)
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context()) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def infer_body(self) -> bytes:
        rows = self.rows[:2]
        return json.dumps(
            {
                "inputs": [
                    {
                        "name": INPUT,
                        "shape": list(rows.shape),
                        "datatype": "FP32",
                        "data": rows.reshape(-1).tolist(),
                    }
                ]
            }
        ).encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeSite]:
    base = tmp_path_factory.mktemp("edge")
    repository = base / "repository"
    members = [
        Settings(home=base / f"replica{i}", model_repository=str(repository)) for i in (1, 2)
    ]
    spec = load_spec(DEFAULT_SPEC)
    spec = spec.model_copy(
        update={"estimator": spec.estimator.model_copy(update={"params": {"n_estimators": 10}})}
    )
    frame = generate_transactions(2000, seed=5, fraud_rate=0.05)
    features = to_features(frame, spec)
    onnx = convert(build_pipeline(spec).fit(features, to_target(frame, spec)), spec.n_features)
    rollout.publish_version(LocalStore(repository), str(repository), spec, 1, onnx, "python")
    keys = {name: secrets.token_urlsafe(32) for name in ("alpha", "beta", "conveyor")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(credentials.TRITON_KEY_ENV, "fleet-" + secrets.token_hex(16))
        try:
            states = [triton_server.start(member) for member in members]
            for state in states:
                triton_client.load_versions(state.endpoint, spec, "python", [1], timeout_s=60)
            upstreams = [edge.Upstream(s.endpoint.http, s.endpoint.grpc) for s in states]
            tls = edge.self_signed(base / "edge")
            with edge.serve(base / "edge", upstreams, keys, tls, RATE, BURST) as (http, grpc):
                yield EdgeSite(base / "edge", members, keys, tls, http, grpc, spec, onnx, features)
        finally:
            for member in members:
                triton_server.stop(member)


def test_no_key_is_401_and_a_valid_key_answers_over_tls(site: EdgeSite) -> None:
    path = f"/v2/models/{site.spec.name}/infer"
    status, body = site.post(path, None, site.infer_body())
    assert status == 401 and "client key" in body, body
    status, body = site.post(path, "not-a-key-" + "x" * 30, site.infer_body())
    assert status == 401, body
    status, body = site.post(path, site.keys["alpha"], site.infer_body())
    assert status == 200, body
    # tritonclient through the edge, over HTTPS and gRPC with TLS: the champion's own answers.
    offline_labels, offline_proba = predict(site.onnx, site.rows[:64])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(credentials.EDGE_KEY_ENV, site.keys["alpha"])
        endpoint = site.endpoint()
        labels, proba = triton_client.infer_http(
            triton_client.http_client(endpoint), site.spec.name, site.rows[:64]
        )
        np.testing.assert_array_equal(labels, offline_labels)
        np.testing.assert_allclose(proba, offline_proba, atol=1e-5)
        labels, proba = triton_client.infer_grpc(
            triton_client.grpc_client(endpoint), site.spec.name, site.rows[:64]
        )
        np.testing.assert_array_equal(labels, offline_labels)
        # Plain HTTP to the TLS port is not answered as inference.
        with pytest.raises(Exception):  # noqa: B017 - any failure: no answer in clear text
            triton_client.infer_http(
                triton_client.http_client(site.endpoint(tls=False), timeout_s=5),
                site.spec.name,
                site.rows[:2],
            )
    # gRPC without a key: UNAUTHENTICATED, from the edge.
    bare = Endpoint(http="unused", grpc=site.endpoint().grpc, tls_ca_file=str(site.tls.trusted))
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer_grpc(triton_client.grpc_client(bare), site.spec.name, site.rows[:2])
    assert "UNAUTHENTICATED" in str(refused.value.status()), refused.value


def test_control_calls_and_candidates_are_refused_at_the_edge(site: EdgeSite) -> None:
    """Even with a client key and the control key, the edge refuses Triton's control APIs; the
    control key a client sends never reaches a replica."""
    control = {credentials.TRITON_KEY_HEADER: os.environ[credentials.TRITON_KEY_ENV]}
    for path in (
        f"/v2/repository/models/{site.spec.name}/unload",
        "/v2/repository/index",
        "/v2/models/stats",
        f"/v2/models/{site.spec.name}/config",
        "/v2/logging",
    ):
        request = urllib.request.Request(
            f"https://{HOST}:{site.http_port}{path}", data=b"{}", headers=control
        )
        request.add_header("Authorization", f"Bearer {site.keys['alpha']}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10, context=site.context())
        assert refused.value.code == 403, path
    # Every replica still serves the model: the unload never got through.
    for member in site.members:
        state = triton_server.status(member)
        assert state is not None
        assert triton_client.loaded_versions(state.endpoint, site.spec.name) == [1]
    # gRPC control: PERMISSION_DENIED at the edge, key or not.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(credentials.EDGE_KEY_ENV, site.keys["alpha"])
        client = triton_client.grpc_client(site.endpoint())
        with pytest.raises(InferenceServerException) as refused_grpc:
            client.get_model_repository_index(headers=credentials.triton_grpc_headers(None))
        assert "PERMISSION_DENIED" in str(refused_grpc.value.status())
    # A release's candidate, loaded on a replica, is not reachable through the edge.
    state = triton_server.status(site.members[0])
    assert state is not None
    files = read_verified(LocalStore(Path(site.members[0].repository)), f"{site.spec.name}/1")
    name = triton_client.load_candidate(site.members[0], state.endpoint, site.spec, 1, files)
    # Nor is a canary by its own name: callers reach it only through a route, by share.
    canary = names.canary_name(site.spec.name)
    triton_client.load_candidate(site.members[0], state.endpoint, site.spec, 1, files, name=canary)
    try:
        direct = triton_client.http_client(state.endpoint)
        for loaded in (name, canary):
            assert direct.is_model_ready(loaded, "1")
            status, body = site.post(
                f"/v2/models/{loaded}/infer", site.keys["alpha"], site.infer_body()
            )
            assert status == 404 and "unknown model" in body, (loaded, body)
    finally:
        triton_client.unload_model(state.endpoint, name)
        triton_client.unload_model(state.endpoint, canary)
    assert names.candidate_version(site.spec.name, name) == 1


def test_a_flooding_client_gets_429_while_another_keeps_its_answers(site: EdgeSite) -> None:
    path = f"/v2/models/{site.spec.name}/infer"
    body = site.infer_body()
    flood: list[int] = []
    steady: list[int] = []
    stop = threading.Event()

    def flooding() -> None:
        while not stop.is_set():
            flood.append(site.post(path, site.keys["alpha"], body)[0])

    threads = [threading.Thread(target=flooding) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        # beta asks well under its rate, all along the flood.
        for _ in range(20):
            steady.append(site.post(path, site.keys["beta"], body)[0])
            time.sleep(1 / (RATE / 2))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert steady == [200] * 20
    assert flood.count(429) > 0 and set(flood) <= {200, 429}, sorted(set(flood))
    # alpha got about its rate (plus the burst) over the run, not what it asked for.
    assert flood.count(200) < len(flood) / 2
    log = (site.directory / "access.log").read_text()
    assert "client=alpha status=429" in log and "client=beta status=200" in log
    for key in site.keys.values():
        assert key not in log  # names, never keys


def test_conveyors_probe_keeps_under_the_edge_rate(site: EdgeSite) -> None:
    """conveyor's swap and canary probes go through the edge with a client key of their own: a
    closed-loop probe floods its rate and fails the release with 429s (seen on the stack, #42);
    paced at the rate settings give it, every request is answered."""
    settings = site.members[0].model_copy(update={"edge_probe_rate_per_s": RATE / 2})
    rate = replicas.probe_rate(settings, site.endpoint())
    assert rate == RATE / 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(credentials.EDGE_KEY_ENV, site.keys["conveyor"])
        with Traffic(site.endpoint(), site.spec.name, site.rows, 4, rate_per_s=rate) as paced:
            paced.wait_for(3 * RATE, timeout_s=30)
    samples = paced.samples()
    assert [s.error for s in samples if s.error] == []
    assert {s.version for s in samples} == {1}
    spread = samples[-1].sent - samples[0].sent
    # Paced: about `rate` requests a second, not what the replicas could answer.
    assert len(samples) <= rate * spread + 4 * 2, (len(samples), spread)


def test_a_revoked_key_is_refused_after_a_reload(site: EdgeSite) -> None:
    path = f"/v2/models/{site.spec.name}/infer"
    time.sleep(1)  # the previous test's flood left alpha's bucket empty
    kept = {n: k for n, k in site.keys.items() if n != "beta"}
    config = (site.directory / "nginx.conf").read_text()
    try:
        edge.write(site.directory, config, kept)
        edge.reload(site.directory)
        deadline = time.monotonic() + 10
        while site.post(path, site.keys["beta"], site.infer_body())[0] != 401:
            assert time.monotonic() < deadline, "the revoked key still answers"
            time.sleep(0.2)
        assert site.post(path, site.keys["alpha"], site.infer_body())[0] == 200
    finally:
        edge.write(site.directory, config, site.keys)
        edge.reload(site.directory)


def test_a_replica_killed_behind_the_edge_costs_no_request(site: EdgeSite) -> None:
    """nginx retries a request the dead replica dropped on the other one; the replica comes
    back (restarted, its model loaded) and takes traffic again."""
    errors: list[str] = []
    answered = [0]
    stop = threading.Event()

    def calling() -> None:
        client = triton_client.http_client(site.endpoint())
        while not stop.is_set():
            try:
                triton_client.infer_http(client, site.spec.name, site.rows[:4])
                answered[0] += 1
            except Exception as exc:  # counted: asserted empty below
                errors.append(str(exc))
            time.sleep(1 / RATE)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(credentials.EDGE_KEY_ENV, site.keys["conveyor"])
        thread = threading.Thread(target=calling)
        thread.start()
        try:
            time.sleep(1)
            state = triton_server.read_state(site.members[1])
            assert state is not None
            os.killpg(state.pid, signal.SIGKILL)
            time.sleep(2)
            restarted = triton_server.start(site.members[1])
            triton_client.load_versions(restarted.endpoint, site.spec, "python", [1], timeout_s=60)
            time.sleep(1)
        finally:
            stop.set()
            thread.join(30)
    assert errors == [], errors[:5]
    assert answered[0] > 20


def test_a_canary_answer_names_the_model_the_caller_asked_for(site: EdgeSite) -> None:
    """Routed to `<model>.canary`, callers read `"model_name": "<model>.canary"`, a name they
    cannot use (#42): the edge names the model asked for, in JSON and binary-tensor answers."""
    model = site.spec.name
    canary = names.canary_name(model)
    loaded = []
    for member in site.members:
        state = triton_server.status(member)
        assert state is not None
        files = read_verified(LocalStore(Path(member.repository)), f"{model}/1")
        # Version 7: an answer that says 7 came from the canary, not the champion (v1).
        triton_client.load_candidate(member, state.endpoint, site.spec, 7, files, name=canary)
        loaded.append(state.endpoint)
    route = site.directory / "routes" / model
    route.mkdir(parents=True, exist_ok=True)
    for bucket in range(1, 101):  # every request to the canary
        (route / str(bucket)).touch()
    try:
        time.sleep(1.5)  # nginx checks route files through a 1 s cache
        status, body = site.post(f"/v2/models/{model}/infer", site.keys["alpha"], site.infer_body())
        assert status == 200, body
        answer = json.loads(body)
        assert (answer["model_name"], answer["model_version"]) == (model, "7"), answer
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(credentials.EDGE_KEY_ENV, site.keys["alpha"])
            result = triton_client.infer_http_result(
                triton_client.http_client(site.endpoint()), model, site.rows[:64]
            )
        assert result.get_response()["model_name"] == model
        assert result.get_response()["model_version"] == "7"
        _, offline_proba = predict(site.onnx, site.rows[:64])
        np.testing.assert_allclose(result.as_numpy("probabilities"), offline_proba, atol=1e-5)
    finally:
        for bucket in route.iterdir():
            bucket.unlink()
        route.rmdir()
        for endpoint in loaded:
            triton_client.unload_model(endpoint, canary)


def test_a_renewal_whose_reload_fails_keeps_the_old_certificate_served(site: EdgeSite) -> None:
    """Near the end (it reloads the edge). nginx refuses a reload (an operator's edit broke its
    file): the renewal says so naming the error log, the edge goes on serving the certificate it
    had and answering callers (who trust the same CA), and once the file is mended the next
    renewal is served."""
    directory = site.directory
    config = directory / "nginx.conf"
    original = config.read_text()
    before = edge_certificate.served_certificate(HOST, site.http_port)
    config.write_text(original + "\nthis is not an nginx directive;\n")
    try:
        with pytest.raises(edge_certificate.RenewalError) as failed:
            edge_certificate.renew(directory, (HOST, site.http_port), timeout_s=3)
        assert "error.log" in str(failed.value) and str(directory) in str(failed.value)
        assert edge_certificate.served_certificate(HOST, site.http_port) == before
        status, body = site.post(
            f"/v2/models/{site.spec.name}/infer", site.keys["beta"], site.infer_body()
        )
        assert status == 200, body
    finally:
        config.write_text(original)
    ends = edge_certificate.renew(directory, (HOST, site.http_port))
    assert ends > before
    assert edge_certificate.served_certificate(HOST, site.http_port) == ends


def test_doctor_renews_the_edge_certificate_before_it_ends(site: EdgeSite, tmp_path: Path) -> None:
    """Last here: it reloads the edge. A certificate near its end (issued 25 days ago, 5 left)
    is a doctor problem; `--repair` issues a new one from the edge's CA and reloads nginx, and
    callers that trust the same CA file go on being answered (#42: it lived 30 days, unrenewed)."""
    directory = site.directory
    settings = Settings(
        home=tmp_path / "home",
        edge_http_url=f"{HOST}:{site.http_port}",
        edge_ca_file=site.tls.trusted,
    )
    assert [p for p in examine(settings, []).problems if p.kind == "edge-certificate"] == []
    trusted = site.tls.trusted.read_bytes()
    old = datetime.now(UTC) - timedelta(days=25)
    edge_certificate.ensure(directory, now=old, renew=True)
    edge.reload(directory)
    deadline = time.monotonic() + 15
    while edge_certificate.served_certificate(HOST, site.http_port) > datetime.now(UTC) + timedelta(
        days=6
    ):
        assert time.monotonic() < deadline, "the edge never served the older certificate"
        time.sleep(0.2)
    [problem] = [p for p in examine(settings, []).problems if p.kind == "edge-certificate"]
    assert "(in 4 days)" in problem.detail and "issue a new one" in problem.repair
    report = check_and_repair(settings, [], True)
    assert report.clean, report.problems
    ends = edge_certificate.served_certificate(HOST, site.http_port)
    assert ends > datetime.now(UTC) + timedelta(days=edge_certificate.CERT_DAYS - 1)
    assert site.tls.trusted.read_bytes() == trusted  # callers trust what they trusted before
    status, body = site.post(
        f"/v2/models/{site.spec.name}/infer", site.keys["beta"], site.infer_body()
    )
    assert status == 200, body

"""A serving fleet: two real Triton servers on one repository, named by CONVEYOR_TRITON_REPLICAS,
driven by `conveyor` subprocesses against a real Prefect API and the SQLite registry.

Each replica is started as the platform would (conveyor does not supervise a fleet): its own
state directory, the shared repository, the operator's control key. The tests run in file order
and each starts from the state the previous one left (both replicas serving the champion).
"""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from prefect.settings import PREFECT_API_URL

from bench.faults import failing_version
from infra import edge
from tasks.core import credentials, names
from tasks.core.settings import Settings, TritonAddress
from tasks.core.spec import load_spec
from tasks.core.storage import open_store
from tasks.datasets.data import save_dataset, to_features
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import predict
from tasks.ops.doctor import checks, scene
from tasks.registry import mlflow_store, model_registry
from tasks.serving import (
    canary,
    edge_routes,
    replicas,
    rollout,
    triton_client,
    triton_ports,
    triton_server,
)
from tests.conftest import SMALL_CANARY, write_spec
from tests.faults import SMALL_RELEASE, Site, assert_one_paragraph, next_version, ok
from tests.servers import clean_env

NAME = "fraud-detector"


@dataclass
class Fleet:
    site: Site
    members: list[Settings]  # each replica's own state directory, on the shared repository
    edge: triton_server.Endpoint  # nginx in front of both, as callers reach them
    edge_dir: Path
    killed: list[int] = field(default_factory=list)
    restarted: list[subprocess.Popen[bytes]] = field(default_factory=list)  # edges started here

    def endpoint(self, i: int) -> triton_server.Endpoint:
        state = triton_server.status(self.members[i])
        assert state is not None, f"replica {i + 1} is down"
        return state.endpoint

    def served(self, i: int) -> list[int]:
        return triton_client.loaded_versions(self.endpoint(i), NAME)

    def kill(self, i: int) -> None:
        """SIGKILL the replica's whole process group (server and stubs), as an OOM kill would."""
        state = triton_server.read_state(self.members[i])
        assert state is not None
        os.killpg(state.pid, signal.SIGKILL)
        self.killed.append(state.pid)

    def restart(self, i: int) -> None:
        """What the platform does: the replica starts again, empty (explicit model control)."""
        triton_server.start(self.members[i])

    def restart_edge(self) -> None:
        """Stop the edge's nginx (fast shutdown: its connections drop) and start it again on
        the same config and routes, as a platform restarts a balancer pod."""
        pid_file = self.edge_dir / "nginx.pid"
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pid_file.exists():  # nginx removes it as it exits
            assert time.monotonic() < deadline, "the edge did not stop"
            time.sleep(0.02)
        self.restarted.append(edge.start(self.edge_dir, self.edge_dir / "nginx.log"))
        assert self.edge.tls_ca_file is not None
        context = ssl.create_default_context(cafile=self.edge.tls_ca_file)
        edge.wait_ready(f"https://{self.edge.http}/v2/health/live", context=context)


def live(site: Site) -> list[int]:
    aliases = (model_registry.CHAMPION, model_registry.PREVIOUS)
    versions = {model_registry.alias_version(site.settings, NAME, a) for a in aliases}
    return sorted(v for v in versions if v is not None)


def assert_fleet_invariant(fleet: Fleet) -> None:
    """Every replica serves exactly champion + previous, no candidate, the champion answering
    like its ONNX file; `conveyor doctor` is clean."""
    site = fleet.site
    champion = site.champion()
    assert champion is not None
    assert model_registry.alias_version(site.settings, NAME, model_registry.CHALLENGER) is None
    store = open_store(site.settings.repository)
    rows = to_features(generate_transactions(200, seed=11, fraud_rate=0.05), site.spec)
    offline_labels, offline_proba = predict(store.read_file(f"{NAME}/{champion}/model.onnx"), rows)
    for i in range(len(fleet.members)):
        assert fleet.served(i) == live(site), f"replica {i + 1}"
        control = triton_client.control_client(fleet.endpoint(i))
        for version in scene.registered_versions(site.settings, NAME):
            assert not control.is_ready(names.candidate_name(NAME, version))
        client = triton_client.http_client(fleet.endpoint(i))
        labels, proba = triton_client.infer_http(client, NAME, rows)
        np.testing.assert_array_equal(labels, offline_labels)
        np.testing.assert_allclose(proba, offline_proba, atol=1e-5)
    for pid in fleet.killed:
        assert triton_server.stray_stubs(pid) == [], f"stubs of killed replica {pid} still run"
    report = checks.examine(site.settings, [NAME])
    assert report.clean and not report.problems, checks.report_lines(report)
    ok(site.run("doctor", NAME))


class Callers:
    """Production callers: unversioned requests through the edge (TLS, a client key) and
    straight to every replica, until stopped."""

    def __init__(self, fleet: Fleet) -> None:
        self.endpoints = [fleet.edge, *(fleet.endpoint(i) for i in range(len(fleet.members)))]
        self.rows = to_features(generate_transactions(8, seed=3, fraud_rate=0.05), fleet.site.spec)
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._call, args=(e,), daemon=True) for e in self.endpoints
        ]

    def _call(self, endpoint: triton_server.Endpoint) -> None:
        client = triton_client.http_client(endpoint)
        while not self._stop.is_set():
            try:
                triton_client.infer_http(client, NAME, self.rows)
                self.answered += 1
            except Exception as exc:  # counted: the test asserts there are none
                self.errors.append(f"{endpoint.http}: {exc}")
            time.sleep(0.01)

    def through(self, endpoint: triton_server.Endpoint) -> list[str]:
        """The errors of the callers of `endpoint`."""
        return [e for e in self.errors if e.startswith(f"{endpoint.http}: ")]

    def __enter__(self) -> Callers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.fixture(scope="module")
def fleet(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("replicas")
    repository = str(base / "repository")
    key = "fleet-" + secrets.token_hex(16)
    members = [Settings(home=base / f"replica{i}", model_repository=repository) for i in (1, 2)]
    fleet: Fleet | None = None
    with pytest.MonkeyPatch.context() as patch:
        # The operator's control key: every replica is started with it, conveyor calls with it.
        patch.setenv(credentials.TRITON_KEY_ENV, key)
        try:
            states = [triton_server.start(member) for member in members]
            addresses = ",".join(f"{s.endpoint.http}/{s.endpoint.grpc}" for s in states)
            settings = Settings(
                home=base / "state",
                model_repository=repository,
                triton_replicas=[
                    TritonAddress(http=s.endpoint.http, grpc=s.endpoint.grpc) for s in states
                ],
            )
            env = clean_env(
                CONVEYOR_HOME=str(settings.home),
                CONVEYOR_MODEL_REPOSITORY=repository,
                CONVEYOR_TRITON_REPLICAS=addresses,
                CONVEYOR_TRITON_ADMIN_KEY=key,
                PREFECT_API_URL=str(PREFECT_API_URL.value()),
                CONVEYOR_LEASE_TIMEOUT_S="240",
            )
            keys = {name: secrets.token_urlsafe(32) for name in ("conveyor", "caller")}
            upstreams = [edge.Upstream(s.endpoint.http, s.endpoint.grpc) for s in states]
            tls = edge.self_signed(base)
            # A rate no test reaches: the limit itself is test_edge's.
            with edge.serve(base / "edge", upstreams, keys, tls, 5000, 5000) as (http, grpc):
                at = f"{triton_ports.HOST}:"
                env |= {
                    "CONVEYOR_EDGE_HTTP_URL": f"{at}{http}",
                    "CONVEYOR_EDGE_GRPC_URL": f"{at}{grpc}",
                    "CONVEYOR_EDGE_CA_FILE": str(tls.trusted),
                    "CONVEYOR_EDGE_ROUTES_DIR": str(base / "edge" / edge.ROUTES),
                    credentials.EDGE_KEY_ENV: keys["conveyor"],
                }
                # This process calls as a client of its own.
                patch.setenv(credentials.EDGE_KEY_ENV, keys["caller"])
                through = triton_ports.Endpoint(
                    http=f"{at}{http}",
                    grpc=f"{at}{grpc}",
                    via_edge=True,
                    tls_ca_file=str(tls.trusted),
                )
                site = Site(base, settings, write_spec(base, **SMALL_RELEASE), env)
                fleet = Fleet(site, members, through, base / "edge")
                ok(site.release())
                assert site.champion() == 1
                yield fleet
        finally:
            for process in fleet.restarted if fleet else []:
                process.terminate()
                process.wait(15)
            for member in members:
                triton_server.stop(member)


def test_release_serves_the_new_champion_on_every_replica(fleet: Fleet) -> None:
    """Both replicas serve the candidate for the smoke test, then both change before the
    champion moves; callers of either replica never fail."""
    site = fleet.site
    before = site.champion()
    assert before is not None
    with Callers(fleet) as callers:
        done = ok(site.release())
    assert callers.errors == [], callers.errors[:5]
    assert callers.answered > 50
    # The swap's probe went through the edge, as a client of its own.
    access = (site.base / "edge" / "access.log").read_text()
    assert "client=conveyor status=200" in access and "client=caller status=200" in access
    assert "2 replicas up" in " ".join(done.split())
    assert site.champion() == before + 1
    assert live(site) == [before, before + 1]
    assert_fleet_invariant(fleet)


def test_rollback_acts_on_every_replica(fleet: Fleet) -> None:
    site = fleet.site
    champion, previous = site.champion(), live(site)[0]
    ok(site.run("rollback", NAME, "--reason", "fleet test"))
    assert site.champion() == previous
    assert [fleet.served(i) for i in (0, 1)] == [[previous], [previous]]
    # Forward again, so the next test starts from champion + previous served everywhere.
    ok(site.release())
    assert site.champion() == max(champion or 0, previous) + 1
    assert_fleet_invariant(fleet)


def test_replica_killed_mid_swap_withdraws_and_doctor_repairs_it(fleet: Fleet) -> None:
    """Replica 1 already serves the new version when replica 2 dies: the release is withdrawn
    (replica 1 put back), and once replica 2 is restarted `doctor --repair` serves the old
    champion on it."""
    site = fleet.site
    before, was_live = site.champion(), live(site)
    new = next_version(site)
    release = site.start("run", "--spec", str(site.spec_path), "--force", log="killed.log")
    deadline = time.monotonic() + 300
    with Callers(fleet) as callers:
        # Replica 1 goes first (`rollout.go_live`): the new version on it means the swap is
        # underway and replica 2 is next.
        while new not in fleet.served(0):
            assert release.poll() is None, site.output("killed.log")[-3000:]
            assert time.monotonic() < deadline, "the swap never reached replica 1"
            time.sleep(0.02)
        fleet.kill(1)
        assert release.wait(300) == 2, site.output("killed.log")[-3000:]
    # Callers of the edge never noticed: nginx retried what the dead replica dropped.
    assert callers.through(fleet.edge) == [], callers.through(fleet.edge)[:5]
    output = " ".join(site.output("killed.log").split())
    assert_one_paragraph(output)
    assert "was withdrawn" in output and "replica 2" in output, output[-2000:]
    assert site.champion() == before
    assert fleet.served(0) == was_live
    # Replica 2 may have served the new version when it died: the files stay until it answers.
    assert open_store(site.settings.repository).exists(f"{NAME}/{new}")

    fleet.restart(1)
    assert fleet.served(1) == []
    found = site.run("doctor", NAME)
    assert found.returncode != 0
    assert "replica 2" in found.stdout and "not served" in found.stdout.replace("-", " "), (
        found.stdout
    )
    ok(site.run("doctor", NAME, "--repair"))
    assert not open_store(site.settings.repository).exists(f"{NAME}/{new}")
    assert_fleet_invariant(fleet)


def test_release_with_a_replica_down_stops_unless_a_minimum_allows(fleet: Fleet) -> None:
    site = fleet.site
    before, was_live, new = site.champion(), live(site), next_version(site)
    triton_server.stop(fleet.members[1])
    refused = site.release()
    output = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, output[-3000:]
    assert_one_paragraph(output)
    assert "needs 2 of 2 Triton replicas up" in output and "replica 2" in output, output
    assert "CONVEYOR_TRITON_MIN_REPLICAS" in output
    # Nothing trained, registered or changed.
    assert site.champion() == before and next_version(site) == new
    assert fleet.served(0) == was_live

    # The operator allows one replica to serve alone: the release goes on without replica 2.
    site.env["CONVEYOR_TRITON_MIN_REPLICAS"] = "1"
    try:
        ok(site.release())
    finally:
        del site.env["CONVEYOR_TRITON_MIN_REPLICAS"]
    assert site.champion() == new
    assert fleet.served(0) == live(site)
    fleet.restart(1)
    ok(site.run("doctor", NAME, "--repair"))
    assert_fleet_invariant(fleet)


def test_doctor_repairs_a_replica_serving_something_else(fleet: Fleet) -> None:
    """A replica that drifted (an operator's manual load, a restart on an old repository):
    doctor names it, --repair brings it back to champion + previous."""
    site = fleet.site
    previous = live(site)[0]
    triton_client.load_versions(
        fleet.endpoint(1), site.spec, site.settings.triton_backend, [previous], timeout_s=60
    )
    assert fleet.served(1) == [previous]
    report = checks.examine(site.settings, [NAME])
    assert not report.clean
    assert {p.key for p in report.problems if p.kind == "not-served"} == {
        replicas.configured(site.settings)[1].name
    }
    ok(site.run("doctor", NAME, "--repair"))
    assert_fleet_invariant(fleet)


CANARY = {"rollout": "canary", "canary": SMALL_CANARY}


def edge_settings(fleet: Fleet) -> Settings:
    """This process's settings as a release worker's: the replicas and the edge."""
    env = fleet.site.env
    return Settings(
        home=fleet.site.settings.home,
        model_repository=fleet.site.settings.model_repository,
        triton_replicas=fleet.site.settings.triton_replicas,
        edge_http_url=env["CONVEYOR_EDGE_HTTP_URL"],
        edge_grpc_url=env["CONVEYOR_EDGE_GRPC_URL"],
        edge_ca_file=env["CONVEYOR_EDGE_CA_FILE"],
        edge_routes_dir=env["CONVEYOR_EDGE_ROUTES_DIR"],
    )


def canary_release(
    fleet: Fleet, log: str, **limits: object
) -> tuple[Site, subprocess.Popen[bytes]]:
    """A canary release (CANARY's limits, with `limits` changed) started in the background."""
    promotion = CANARY | {"canary": CANARY["canary"] | limits}  # type: ignore[operator]
    site = replace(
        fleet.site,
        spec_path=write_spec(fleet.site.base, **SMALL_RELEASE, promotion=promotion),
    )
    return site, site.start("run", "--spec", str(site.spec_path), "--force", log=log)


def wait_for_route(fleet: Fleet, site: Site, release: subprocess.Popen[bytes], log: str) -> None:
    """Until the release's canary has its route at the edge: it is baking."""
    deadline = time.monotonic() + 300
    while NAME not in edge_routes.open_routes(edge_settings(fleet)):
        assert release.poll() is None, site.output(log)[-3000:]
        assert time.monotonic() < deadline, "the canary never opened its route"
        time.sleep(0.05)


def test_failing_canary_is_withdrawn_within_its_bake_and_no_caller_fails(fleet: Fleet) -> None:
    """A candidate that fails ~40 % of its requests (`bench.faults`) gets 30 % of the edge's
    traffic: the errors in Triton's statistics withdraw it long before the bake time ends,
    callers through the edge never see a failure (the edge answers a failed canary request with
    the champion), and afterwards the champion answers everything."""
    site = fleet.site
    settings = edge_settings(fleet)
    spec = load_spec(write_spec(site.base, **SMALL_RELEASE, promotion=CANARY))
    champion = site.champion()
    assert champion is not None
    store = open_store(settings.repository)
    # A registry version of its own (no run: it was never trained), as a release registers one.
    made = mlflow_store.client(settings).create_model_version(NAME, source=str(site.base))
    bad = int(made.version)
    store.publish_dir(
        f"{NAME}/{bad}", failing_version(store.read_file(f"{NAME}/{champion}/model.onnx"))
    )
    ref = model_registry.ModelRef(name=NAME, version=bad, run_id="none", model_uri="none")
    rollout.serve_candidate(settings, spec, ref)
    frame = generate_transactions(300, seed=5, fraud_rate=0.05)
    holdout = save_dataset(frame, site.base, "canary-holdout", spec.target.name)
    with Callers(fleet) as callers:
        report = canary.bake(settings, spec, ref, holdout)
    assert callers.errors == [], callers.errors[:5]
    assert report.probe_failures == 0
    assert report.problems and "failed" in report.problems[0], report.summary()
    assert report.baked_s < spec.promotion.canary.bake_s, report.summary()
    # What reached the bad version, from Triton's statistics: a share, and it failed some.
    assert 0 < report.candidate.requests < report.champion.requests, report.summary()
    assert report.candidate.failed > 0
    # The route is closed before bake returns; the release's withdrawal does the rest.
    assert edge_routes.open_routes(settings) == []
    rollout.withdraw(settings, spec, ref)
    rows = to_features(frame, spec)[:50]
    answered = triton_client.http_client(fleet.edge)
    for row in rows:
        result = triton_client.infer_http_result(answered, NAME, row.reshape(1, -1))
        assert int(result.get_response()["model_version"]) == champion
    assert_fleet_invariant(fleet)


def test_good_canary_is_promoted_through_a_balancer_restart_and_a_stale_route_is_cleared(
    fleet: Fleet,
) -> None:
    """A release with `rollout: canary`: the candidate bakes behind the edge, which is restarted
    mid-bake (the route is files: the new nginx reads it), is judged within its limits, goes to
    both replicas and is promoted. Callers of the replicas never fail; callers of the edge only
    fail to connect while it is down. A route a dead release left behind is a doctor problem,
    repaired, and cleared by the next release too."""
    settings = edge_settings(fleet)
    new = next_version(fleet.site)
    site, release = canary_release(fleet, "canary.log")
    with Callers(fleet) as callers:
        wait_for_route(fleet, site, release, "canary.log")
        time.sleep(1)
        fleet.restart_edge()
        assert release.wait(300) == 0, site.output("canary.log")[-3000:]
    through_edge = callers.through(fleet.edge)
    assert [e for e in callers.errors if e not in through_edge] == []
    # Refused or reset while nginx was down, never an answer that failed.
    assert all("onnect" in e for e in through_edge), through_edge[:5]
    text = " ".join(site.output("canary.log").split())
    assert "canary" in text, text[-3000:]
    assert site.champion() == new
    assert edge_routes.open_routes(settings) == []
    run = model_registry.version_ref(site.settings, NAME, new).run_id
    metrics = mlflow_store.client(site.settings).get_run(run).data.metrics
    assert metrics["canary_requests"] > 0 and metrics["canary_error_rate"] == 0
    assert_fleet_invariant(fleet)

    # A route left by a release that died mid-bake: callers still get the champion (the
    # canary it sends to is gone), doctor names it and --repair removes it.
    edge_routes.open_route(settings, NAME, 0.5)
    with Callers(fleet) as callers:
        time.sleep(1)
        found = site.run("doctor", NAME)
    assert callers.errors == [], callers.errors[:5]
    assert found.returncode != 0 and "stale-route" in found.stdout, found.stdout
    ok(site.run("doctor", NAME, "--repair"))
    assert edge_routes.open_routes(settings) == []
    assert_fleet_invariant(fleet)


def test_replica_killed_during_the_canary_bake_withdraws_and_doctor_repairs_it(
    fleet: Fleet,
) -> None:
    """Replica 2 dies while the canary bakes: the release stops (Triton's statistics cannot be
    read from it), closes the route and withdraws the candidate from replica 1; callers of the
    edge never fail; once replica 2 is back, `doctor --repair` serves the champion on it."""
    settings = edge_settings(fleet)
    before, was_live, new = fleet.site.champion(), live(fleet.site), next_version(fleet.site)
    site, release = canary_release(fleet, "bake-kill.log", bake_s=60)
    with Callers(fleet) as callers:
        wait_for_route(fleet, site, release, "bake-kill.log")
        time.sleep(2)  # the candidate answers a share of the callers
        fleet.kill(1)
        assert release.wait(300) == 2, site.output("bake-kill.log")[-3000:]
    assert callers.through(fleet.edge) == [], callers.through(fleet.edge)[:5]
    output = " ".join(site.output("bake-kill.log").split())
    assert_one_paragraph(output)
    assert "was withdrawn" in output and "replica 2" in output, output[-2000:]
    assert edge_routes.open_routes(settings) == []
    assert site.champion() == before and fleet.served(0) == was_live
    assert not triton_client.control_client(fleet.endpoint(0)).is_ready(
        names.candidate_name(NAME, new)
    )
    fleet.restart(1)
    ok(site.run("doctor", NAME, "--repair"))
    assert_fleet_invariant(fleet)


def test_a_replica_dying_under_a_go_live_puts_the_changed_ones_back(fleet: Fleet) -> None:
    """What a rollback (or swap) does when a later replica dies under it, made deterministic: the
    second target's ports are closed. Replica 1 had already changed and the repository had not
    (a rollback adds no files): it is put back on champion + previous by the config itself."""
    site = fleet.site
    was_live = live(site)
    dead = replicas.Replica(
        name="replica 3 (dead)",
        endpoint=triton_ports.Endpoint(
            http=f"{triton_ports.HOST}:1", grpc=f"{triton_ports.HOST}:1"
        ),
    )
    first = replicas.configured(site.settings)[0]
    with pytest.raises(triton_client.TritonUnreachableError, match="replica 3") as raised:
        rollout.go_live(site.settings, site.spec, [was_live[0]], targets=[first, dead])
    assert f"{first.name} put back" in str(raised.value), str(raised.value)
    assert fleet.served(0) == was_live
    assert_fleet_invariant(fleet)


def test_replica_killed_during_rollback_ends_with_the_champion_served(fleet: Fleet) -> None:
    """Replica 2 is killed as the rollback's go-live reaches it. Which side of its load the kill
    lands on is the race a real crash is: the rollback either stops before any alias moves
    (replica 1 put back) or finishes on both; either way, once replica 2 is back, `doctor
    --repair` serves the champion on it and the fleet is whole."""
    site = fleet.site
    champion, was_live = site.champion(), live(site)
    previous = was_live[0]
    rollback = site.start("rollback", NAME, "--reason", "replica dies", log="rollback-kill.log")
    deadline = time.monotonic() + 300
    with Callers(fleet) as callers:
        while fleet.served(0) != [previous]:
            assert rollback.poll() is None, site.output("rollback-kill.log")[-3000:]
            assert time.monotonic() < deadline, "the rollback never reached replica 1"
            time.sleep(0.005)
        fleet.kill(1)
        code = rollback.wait(300)
    assert callers.through(fleet.edge) == [], callers.through(fleet.edge)[:5]
    output = " ".join(site.output("rollback-kill.log").split())
    if code == 0:
        assert site.champion() == previous and fleet.served(0) == [previous]
    else:
        assert_one_paragraph(output)
        assert "replica 2" in output, output[-2000:]
        assert site.champion() == champion and live(site) == was_live
        assert fleet.served(0) == was_live
    fleet.restart(1)
    ok(site.run("doctor", NAME, "--repair"))
    assert_fleet_invariant(fleet)

"""Faults on a model released from a spec outside the fleet folder (`--spec` anywhere is a normal
way to start): a release killed mid-swap, then each command that takes the model's lease; the
embedded Triton killed; finite inputs far outside the spec's ranges; a `conveyor run` killed
with its own Prefect API. Real components throughout; each ends with the invariant (champion
served like its ONNX file, no unaliased version loaded, `conveyor doctor` clean).

The model is a logistic regression: before inputs were clipped to the contract it answered
every feature at 1e37 with NaN probabilities.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prefect.settings import PREFECT_API_URL

from tasks.core import owned_processes
from tasks.core.settings import Settings
from tasks.registry import model_registry
from tasks.serving import answers, triton_client, triton_server
from tests.conftest import write_spec
from tests.faults import (
    SMALL_RELEASE,
    Site,
    assert_invariant,
    kill,
    loaded,
    next_version,
    ok,
    serving,
    wait_until,
)
from tests.servers import clean_env

NAME = "outside-fleet"


@pytest.fixture(scope="module")
def site(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("outside")
    settings = Settings(home=base / "state")
    overrides = SMALL_RELEASE | {
        "name": NAME,
        "estimator.family": "logistic_regression",
        "estimator.params": {},
        "search.space": {"C": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
    }
    spec_path = write_spec(base, **overrides)
    env = clean_env(
        CONVEYOR_HOME=str(settings.home),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        CONVEYOR_LEASE_TIMEOUT_S="240",
    )
    site = Site(base, settings, spec_path, env)
    try:
        ok(site.release())
        ok(site.release())
        assert site.champion() == 2
        yield site
    finally:
        triton_server.stop(settings)


def _spec_is_outside_the_fleet(site: Site) -> None:
    fleet = site.settings.spec_dir.resolve()
    assert site.spec_path.resolve().parent != fleet
    assert not any(NAME in p.read_text() for p in fleet.glob("*.yaml"))


# In this order: each follow-up starts from the state the one before left.
FOLLOW_UPS = ["resume last", "doctor --repair", "rollback"]


@pytest.mark.parametrize("follow_up", FOLLOW_UPS)
def test_killed_mid_swap_the_next_leased_command_serves_champion_and_previous_only(
    site: Site, follow_up: str
) -> None:
    """A forced release SIGKILLed while its new version answers callers beside the champion:
    whichever leased command comes next leaves Triton serving exactly champion (+ previous),
    the release's files verified or gone, and doctor clean."""
    _spec_is_outside_the_fleet(site)
    champion = site.champion()
    previous = model_registry.alias_version(site.settings, NAME, model_registry.PREVIOUS)
    new = next_version(site)
    log = f"mid-swap-{follow_up.split()[0]}.log"
    process = site.start("run", "--spec", str(site.spec_path), "--force", log=log)
    wait_until(lambda: f"{NAME}:{new}" in loaded(site), "the swap", process)
    kill(process)
    # The crash window: unversioned requests reach the unpromoted version until the next
    # leased command (docs/production.md, "What callers see between a crash and the next
    # command").
    assert f"{NAME}:{new}" in loaded(site)
    if follow_up == "resume last":
        # Not forced again: the resume finishes the release as it was started.
        done = ok(site.run("run", "--spec", str(site.spec_path), "--resume", "last"))
        assert "unchanged" not in done, done[-2000:]
        assert site.champion() == new
        assert (
            model_registry.alias_version(site.settings, NAME, model_registry.PREVIOUS) == champion
        )
    elif follow_up == "doctor --repair":
        done = ok(site.run("doctor", NAME, "--repair"))
        assert "unaliased-served" in done and "[repaired]" in done, done
        assert site.champion() == champion
    else:
        ok(site.run("rollback", NAME, "--reason", "bad release after a crash"))
        assert site.champion() == previous
    assert f"{NAME}:{new}" not in loaded(site) or site.champion() == new
    assert_invariant(site)


def test_rollback_and_status_know_a_model_whose_spec_is_outside_the_fleet(site: Site) -> None:
    status = ok(site.run("status", "--json"))
    assert f'"model":"{NAME}"' in status.replace(" ", "")
    # Nothing to roll back to after the rollback above: a paragraph and exit 2, not exit 1.
    done = site.run("rollback", NAME)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no `previous` version" in " ".join(done.stdout.split())
    unknown = site.run("rollback", "no-such-model")
    assert unknown.returncode == 2
    assert "has no version of it" in " ".join(unknown.stdout.split())


def test_killed_triton_comes_back_on_the_same_ports(site: Site) -> None:
    state = serving(site)
    assert state is not None
    os.kill(state.pid, signal.SIGKILL)
    site.killed_servers.append(state.pid)
    ok(site.run("doctor", NAME, "--repair"))
    again = serving(site)
    assert again is not None and again.pid != state.pid
    ports = (again.http_port, again.grpc_port, again.metrics_port)
    assert ports == (state.http_port, state.grpc_port, state.metrics_port)
    assert_invariant(site)


@pytest.mark.parametrize("protocol", ["HTTP", "gRPC"])
def test_finite_inputs_outside_the_ranges_are_answered_with_numbers(
    site: Site, protocol: str
) -> None:
    state = serving(site)
    assert state is not None
    rows = answers.extreme_rows(site.spec)
    if protocol == "HTTP":
        _, proba = triton_client.infer_http(triton_client.http_client(state.endpoint), NAME, rows)
    else:
        _, proba = triton_client.infer_grpc(triton_client.grpc_client(state.endpoint), NAME, rows)
    assert np.isfinite(proba).all(), proba
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def _owned_by(pid: int) -> list[int]:
    owner = f"{pid}:"
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and (owned_processes._owner_of(int(entry.name)) or "").startswith(owner)
    ]


def test_a_killed_run_leaves_no_process_once_the_next_command_ends(site: Site) -> None:
    """`conveyor run` on its own ephemeral Prefect API (as `make run` has it), SIGKILLed alone
    (an OOM kill): its API server outlives it, until the next command ends it."""
    env = {k: v for k, v in site.env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(site.base / "prefect-home")
    process = site.start(
        "run", "--spec", str(site.spec_path), "--force", "--no-wait", log="own-api.log", env=env
    )
    wait_until(lambda: bool(_owned_by(process.pid)), "its own Prefect API", process)
    os.kill(process.pid, signal.SIGKILL)  # the command alone, not its process group
    process.wait(10)
    left = _owned_by(process.pid)
    assert left, "the killed command left nothing: the fault did not happen"
    counted = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left}
    assert any(b"uvicorn" in cmdline for cmdline in counted.values()), counted
    ok(site.run("doctor", NAME, "--repair"))
    assert _owned_by(process.pid) == []
    assert [pid for pid in left if owned_processes._running(pid)] == []
    assert_invariant(site)

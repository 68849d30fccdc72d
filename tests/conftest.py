"""Shared fixtures. Unit tests need no server; integration tests get one Prefect API for the whole
session and their own state directory, embedded Triton included."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks.settings import Settings
from tasks.spec import DEFAULT_SPEC
from tests.servers import ProductionStack

ROOT = Path(__file__).resolve().parent.parent


# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`): an integration
# module's tests stay together on one worker, in file order, since they share module fixtures
# and build on each other's state; every module on the session's production stack is one
# group, so one worker starts the stack and the tests that stop parts of it (its MLflow, a
# worker) never overlap another test on it.
STACK_GROUP = "production-stack"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    on_stack = {
        item.module.__name__
        for item in items
        if isinstance(item, pytest.Function) and "production" in item.fixturenames
    }
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in {"unit", "flows", "integration"}:
            item.add_marker(getattr(pytest.mark, kind))
        if kind == "integration" and isinstance(item, pytest.Function):
            module = item.module.__name__
            item.add_marker(pytest.mark.xdist_group(STACK_GROUP if module in on_stack else module))


def pytest_configure(config: pytest.Config) -> None:
    # A developer's own CONVEYOR_* settings must not leak into the tests' state directories.
    for name in [n for n in os.environ if n.startswith("CONVEYOR_") or n == "TRITON_URL"]:
        del os.environ[name]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Specs and infra assets are addressed relative to the checkout, as `make` runs them.
    monkeypatch.chdir(ROOT)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings()


_spec_numbers = itertools.count()


def write_spec(directory: Path, base: Path = DEFAULT_SPEC, **overrides: object) -> Path:
    """A shipped spec (the fraud one by default), made smaller so a release takes seconds;
    overrides are `section.key`."""
    raw = yaml.safe_load(base.read_text())
    raw["data"]["rows"] = 12_000 if base == DEFAULT_SPEC else 6_000
    raw["smoke"]["rows"] = 600
    raw["smoke"]["latency_requests"] = 100
    raw["smoke"]["load_requests"] = 400
    # The serving sweep reloads the candidate six times; tests that need it turn it back on.
    raw["serving"]["tuning"] = {"enabled": False}
    raw["search"] |= {"trials": 2, "parallel": 2}
    if base == DEFAULT_SPEC:
        raw["estimator"]["params"]["n_estimators"] = 30
        raw["search"]["space"] = {"max_depth": {"type": "int", "low": 6, "high": 12}}
    for dotted, value in overrides.items():
        if "." not in dotted:
            raw[dotted] = value
            continue
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            target = target[section]
        target[key] = value
    path = directory / f"spec-{next(_spec_numbers)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def small_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One Prefect API server for the session (ephemeral mode would start one per flow call)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def production() -> Iterator[ProductionStack]:
    """`make stack`'s topology, once per session, for the server tests (each uses its own model
    names and state directories, so they stay independent on it)."""
    from tests.servers import production_stack

    # The scheduler checks every 5 s instead of 60, so nightly runs appear during a test; the
    # workers poll every 2 s instead of 10, so a deployment run starts soon after it is asked for.
    with production_stack(
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", PREFECT_WORKER_QUERY_SECONDS="2"
    ) as stack:
        yield stack


# Zombie-run detection on the tests' stack: a dead run is Crashed within a test's patience
# (production keeps make's 600 s); above two of the stack workers' 30 s heartbeats.
ZOMBIE_AFTER_S = 75


@pytest.fixture(scope="session")
def deployed(
    production: ProductionStack, tmp_path_factory: pytest.TempPathFactory
) -> ProductionStack:
    """`make deploy` on the session's stack, once, as an operator runs it with the stack's env
    file sourced: work pools, every deployment of prefect.yaml, the zombie-run automation."""
    import subprocess

    from tests.servers import clean_env

    home = tmp_path_factory.mktemp("deploy-client")
    done = subprocess.run(
        ["make", "-s", "deploy", f"ZOMBIE_AFTER_S={ZOMBIE_AFTER_S}"],
        env=clean_env(PREFECT_HOME=str(home), **production.env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return production

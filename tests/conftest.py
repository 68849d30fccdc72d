"""Shared fixtures. Unit tests need no server; integration tests get one Prefect API for the whole
session and their own state directory, embedded Triton included."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC
from tests.servers import ProductionStack

ROOT = Path(__file__).resolve().parent.parent


# `make test` runs the suite on two pytest-xdist workers. A test module's tests stay together on
# one worker, in file order, since they share module fixtures and build on each other's state;
# the modules on the session's production stack form one unit, so one worker starts the stack
# and the tests that stop parts of it (its MLflow, a worker) overlap no other test on it.
# (xdist's `--dist loadgroup` marks have no effect under pytest 9.2: xdist 3.8 renames node ids
# through an attribute pytest no longer reads, hence a scheduler of our own.)
STACK_GROUP = "production-stack"
STACK_MODULES = frozenset(
    {
        "test_approval.py",
        "test_deployments.py",
        "test_mlflow_auth.py",
        "test_observability.py",
        "test_secrets.py",
        "test_ui.py",
    }
)


def scheduling_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return STACK_GROUP if Path(path).name in STACK_MODULES else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrStack(LoadScopeScheduling):
        """LoadScopeScheduling by `scheduling_unit`; the biggest unit (the stack's) first."""

        def _split_scope(self, nodeid: str) -> str:
            return scheduling_unit(nodeid)

    return ModuleOrStack(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in {"unit", "flows", "integration"}:
            item.add_marker(getattr(pytest.mark, kind))
    # A module that uses the stack but is missing from STACK_MODULES would start a second stack
    # on the other worker, beside tests that stop parts of the first.
    unlisted = {
        Path(str(item.fspath)).name
        for item in items
        if isinstance(item, pytest.Function) and "production" in item.fixturenames
    } - STACK_MODULES
    if unlisted:
        raise pytest.UsageError(f"add {sorted(unlisted)} to tests/conftest.py's STACK_MODULES")


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


# A canary's limits for a small test: a few seconds of bake, a verdict from a few dozen requests.
SMALL_CANARY = {
    "share": 0.3,
    "bake_s": 8,
    "min_requests": 20,
    "max_error_rate": 0.02,
    # Small models on 2 busy cores: latency is noise here; errors are the point.
    "max_p99_ratio": 5.0,
    "max_prediction_shift": 0.5,
    "probe_clients": 2,
}


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
            target = target.setdefault(section, {})
        target[key] = value
    path = directory / f"spec-{next(_spec_numbers)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def small_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect API server for the session (ephemeral mode would start one per flow call):
    `prefect server start`, as production runs it, not Prefect's test harness. The harness runs
    the server in ephemeral mode, without the repossessor service, so a concurrency lease whose
    holder died would never expire there. The model's lease promises that it does."""
    import prefect.context
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.servers import prefect_server

    with (
        prefect_server(
            tmp_path_factory.mktemp("prefect-api"),
            PREFECT_UI_ENABLED="false",
            PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="5",
        ) as api,
        temporary_settings(updates={PREFECT_API_URL: api}),
        # Contexts copied before this fixture (a thread pool's) see the server too.
        prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
    ):
        yield
        APILogWorker.drain_all()  # before the server stops, so no log is sent to nowhere


@pytest.fixture(scope="session")
def production() -> Iterator[ProductionStack]:
    """`make stack`'s topology, once per session, for the server tests (each uses its own model
    names and state directories, so they stay independent on it)."""
    from tests.servers import production_stack

    # The scheduler checks every 5 s instead of 60, so nightly runs appear during a test; the
    # workers poll every 2 s instead of 10, so a deployment run starts soon after it is asked for;
    # Prometheus scrapes and evaluates its rules every second instead of every 15.
    with production_stack(
        scrape_interval="1s",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="2",
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

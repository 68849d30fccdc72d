"""Faults on real components, one state directory: `conveyor run` processes against a real
Prefect API, the embedded Triton and the SQLite registry. Each fault ends with the same check:
the champion answers like its ONNX file, every alias is on a servable version, no candidate,
orphan file or stray stub is left, and `conveyor doctor` exits 0.

The tests run in file order and each starts from the state the previous one left (a champion
served); every one of them restores that state or moves it forward.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest
from prefect.settings import PREFECT_API_URL

from tasks.core.settings import Settings
from tasks.ops.doctor import checks
from tasks.registry import alias_history, model_registry, tracking
from tasks.serving import triton_server
from tests.conftest import write_spec
from tests.faults import (
    SMALL_RELEASE,
    Site,
    assert_invariant,
    assert_one_paragraph,
    candidate_ready,
    kill,
    loaded,
    next_version,
    ok,
    serving,
    wait_until,
)
from tests.servers import clean_env

NAME = "fraud-detector"


@pytest.fixture(scope="module")
def site(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("faults")
    settings = Settings(home=base / "state")
    spec_path = write_spec(
        base,
        **SMALL_RELEASE,
    )
    env = clean_env(
        CONVEYOR_HOME=str(settings.home),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        # A release that finds the model busy waits at most this long in these tests.
        CONVEYOR_LEASE_TIMEOUT_S="240",
    )
    site = Site(base, settings, spec_path, env)
    try:
        ok(site.release())
        assert site.champion() == 1
        yield site
    finally:
        triton_server.stop(settings)


def test_concurrent_releases_queue_and_no_wait_names_the_holder(site: Site) -> None:
    """Two releases of one model started together both complete, one after the other (never
    a 503 from the other's candidate); a third with --no-wait exits 2 naming the holder."""
    before = site.champion()
    assert before is not None
    first = site.start("run", "--spec", str(site.spec_path), "--force", log="first.log")
    second = site.start("run", "--spec", str(site.spec_path), "--force", log="second.log")
    holder = site.settings.home / "locks" / f"{NAME}.lock"
    wait_until(lambda: holder.is_file() and bool(holder.read_text()), "the lease", first)
    held = json.loads(holder.read_text())
    third = site.release("--no-wait")
    output = " ".join((third.stdout + third.stderr).split())
    assert third.returncode == 2, output
    assert_one_paragraph(output)
    assert f"{NAME} is busy" in output
    assert f"pid {held['pid']}" in output and str(held["flow_run_id"]) in output
    codes = (first.wait(400), second.wait(400))
    outputs = site.output("first.log") + site.output("second.log")
    assert codes == (0, 0), outputs[-4000:]
    assert "503" not in outputs and "unknown model" not in outputs
    # The one that waited said so while it waited, naming the holder (it printed nothing).
    assert f"waiting: {NAME} is busy" in " ".join(outputs.split())
    # --no-wait registered nothing; the two others one version each.
    assert site.champion() == before + 2
    assert model_registry.alias_version(site.settings, NAME, model_registry.PREVIOUS) == before + 1
    assert next_version(site) == before + 3
    assert_invariant(site)


MOMENTS = ["training", "export", "smoke", "swap", "promotion"]


@pytest.mark.parametrize("follow_up", ["fresh release", "resume last"])
@pytest.mark.parametrize("moment", MOMENTS)
def test_release_killed_then_the_next_release_repairs_and_completes(
    site: Site, moment: str, follow_up: str
) -> None:
    """SIGKILL at each moment of a release, then either a fresh release or `--resume last`:
    the next one clears what the dead one left (provably dead: its lock is free) and goes live."""
    before = site.champion()
    assert before is not None
    previous = model_registry.alias_version(site.settings, NAME, model_registry.PREVIOUS)
    new = next_version(site)

    def training() -> bool:
        return any(n.startswith("train-") for _, n in tracking.running_runs(site.settings, NAME))

    reached = {
        # The candidate's MLflow run is open: trials or the refit are running.
        "training": training,
        # Registered as challenger: the ONNX export and the publish to the repository follow.
        "export": lambda: (
            model_registry.alias_version(site.settings, NAME, model_registry.CHALLENGER) == new
        ),
        "smoke": lambda: candidate_ready(site, new),
        # The new version is loaded under the model's own name beside the champion.
        "swap": lambda: f"{NAME}:{new}" in loaded(site),
        # The promotion's first write: `previous` moves onto the champion, `champion` is next.
        "promotion": lambda: (
            model_registry.alias_version(site.settings, NAME, model_registry.PREVIOUS)
            == before
            != previous
        ),
    }[moment]
    # What the dead release leaves at each moment, as doctor names it (mid-promotion it
    # depends on which write the kill lands after).
    left = {
        "training": {"stale-run"},
        "export": {"dangling-challenger"},
        "smoke": {"dangling-challenger", "orphan-version"},
        # Callers were reaching the unpromoted version.
        "swap": {"dangling-challenger", "orphan-version", "unaliased-served"},
        "promotion": set(),
    }[moment]
    process = site.start(
        "run", "--spec", str(site.spec_path), "--force", log=f"killed-{moment}-{follow_up}.log"
    )
    wait_until(reached, moment, process)
    kill(process)
    report = checks.examine(site.settings, [NAME])
    kinds = {p.kind for p in report.problems}
    assert left <= kinds, checks.report_lines(report)
    if follow_up == "resume last":
        done = ok(site.release("--resume", "last"))
        # The killed release's own version goes live, whatever it had done.
        assert site.champion() == new, done[-3000:]
    else:
        ok(site.release())
        # The killed release used up its version number if it had registered one.
        assert site.champion() == (new if moment == "training" else new + 1)
    assert_invariant(site)
    assert tracking.running_runs(site.settings, NAME) == []


@pytest.mark.parametrize("moment", ["smoke", "swap"])
def test_triton_killed_mid_release_fails_cleanly_and_the_champion_is_served(
    site: Site, moment: str
) -> None:
    """Mid-smoke, or mid-swap while the swap's probe clients send unversioned requests."""
    champion, new = site.champion(), next_version(site)
    log = f"triton-killed-{moment}.log"
    process = site.start("run", "--spec", str(site.spec_path), "--force", log=log)
    reached = {
        "smoke": lambda: candidate_ready(site, new),
        "swap": lambda: f"{NAME}:{new}" in loaded(site),
    }[moment]
    wait_until(reached, moment, process)
    state = serving(site)
    assert state is not None
    os.kill(state.pid, signal.SIGKILL)
    site.killed_servers.append(state.pid)
    code = process.wait(300)
    output = " ".join(site.output(log).split())
    assert code == 2, output[-4000:]
    assert_one_paragraph(output)
    # The smoke test saw its candidate gone (a gate: SmokeTestError), or a call found the server
    # gone (an inference, the candidate's load still open, the wait for the new version): the
    # release was withdrawn. One paragraph each, after the clean-up.
    outcomes = ("is not loaded on Triton", "was withdrawn")
    assert any(o in output for o in outcomes), output[-2000:]
    assert site.champion() == champion
    assert_invariant(site)


def test_rollback_during_a_release_waits_for_it_then_rolls_it_back(site: Site) -> None:
    before, new = site.champion(), next_version(site)
    assert before is not None
    release = site.start("run", "--spec", str(site.spec_path), "--force", log="during.log")
    holder = site.settings.home / "locks" / f"{NAME}.lock"
    wait_until(lambda: holder.is_file() and bool(holder.read_text()), "the lease", release)
    rollback = site.run("rollback", NAME, "--reason", "fault test", timeout_s=400)
    assert release.wait(400) == 0, site.output("during.log")[-4000:]
    ok(rollback)
    # The rollback waited for the release (v`new`) and then undid it.
    assert site.champion() == before
    history = alias_history.moves(site.settings, NAME)
    champion_moves = [m for m in history if m.alias == model_registry.CHAMPION][-2:]
    assert [m.to_version for m in champion_moves] == [new, before]
    assert_invariant(site)

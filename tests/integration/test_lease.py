"""The model's lease on a real Prefect API: a flow that is refused or gives up waiting leaves the
server's slot as it found it, and the refusal names the run that holds it, not the asker.

A slot granted to a request the asker had stopped waiting for is never released, and the tests'
API (no repossessor service) never expires it: every later release of that model would wait
for nothing. Two state directories stand for two hosts, so only the server's slot stands
between them."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from tasks.core import lease
from tasks.core.settings import Settings

MODEL = "lease-probe"


def active_slots() -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(lease.limit_name(MODEL)).active_slots


@flow(name="lease-holder")
def hold(settings: Settings, taken: threading.Event, done: threading.Event) -> str:
    with lease.model_lease(settings, MODEL, "release"):
        taken.set()
        done.wait(120)
    return str(flow_run.id)


@flow(name="lease-asker")
def ask(settings: Settings, wait: bool) -> str:
    """The refusal's message and this run's id, side by side."""
    try:
        with lease.model_lease(settings, MODEL, "doctor", wait=wait):
            return "granted"
    except lease.ModelBusyError as refused:
        return f"{refused} | asked by {flow_run.id}"


@pytest.fixture()
def held(prefect_api: None, tmp_path: Path) -> Iterator[threading.Event]:
    """A release holding the model's lease from another state directory until the test ends."""
    taken, done = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(hold, Settings(home=tmp_path / "host-a"), taken, done)
        assert taken.wait(120), "the holder never took the lease"
        try:
            yield done
        finally:
            done.set()
            holder.result(120)
    assert active_slots() == 0


def spin(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


@pytest.fixture()
def busy() -> Iterator[None]:
    """A spinning process per core: the server answers slower than a no-wait asker's patience."""
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    spinners = [spawn.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join(30)


def test_refusals_and_timeouts_leave_only_the_holders_slot(
    held: threading.Event, busy: None, tmp_path: Path
) -> None:
    other = Settings(home=tmp_path / "host-b", lease_timeout_s=1.5)
    # Eight at once, half refused at once, half after waiting out their time.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(other, wait=bool(i % 2)), range(8)))
    for answer in answers:
        assert answer != "granted" and "lease-probe is busy" in answer, answer
    assert active_slots() == 1, "a refused or timed-out flow left a slot taken"
    held.set()


def test_a_refusal_names_the_holding_run_not_the_asker(held: threading.Event, tmp_path: Path):
    answer = ask(Settings(home=tmp_path / "host-b"), wait=False)
    message, asker = answer.split(" | asked by ")
    assert "flow run" in message and asker not in message, answer
    held.set()


def test_no_wait_askers_of_a_free_lease_leave_it_free(
    prefect_api: None, busy: None, tmp_path: Path
) -> None:
    """Eight hosts ask at once without waiting (doctor --repair on each): some are granted, the
    rest refused, and none leaves the slot taken once it has answered."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: ask(Settings(home=tmp_path / f"host-{i}"), wait=False), range(8))
        )
    assert "granted" in answers, answers
    assert active_slots() == 0, "an asker that gave up left the slot taken"
    assert ask(Settings(home=tmp_path / "host-0"), wait=False) == "granted"


HOLD = """
import sys, time
from tasks.core import lease
from tasks.core.settings import Settings
with lease.model_lease(Settings(home=sys.argv[1]), sys.argv[2], "release"):
    print("taken", flush=True)
    time.sleep(600)
"""


def test_a_killed_holders_lease_expires_and_the_next_flow_gets_it(
    prefect_api: None, tmp_path: Path
) -> None:
    """A release killed on another host (its own state directory) cannot release the server's
    slot: the lease expires `lease_duration_s` after its last renewal, and a waiting flow goes
    on, instead of every later release of the model waiting for ever."""
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "host-a"), MODEL],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "taken"
        assert "lease-probe is busy" in ask(Settings(home=tmp_path / "host-b"), wait=False)
    finally:
        holder.kill()  # SIGKILL: nothing of it runs again, its slot is not released
        holder.wait(30)
    assert active_slots() == 1
    began = time.monotonic()
    patient = Settings(home=tmp_path / "host-b", lease_timeout_s=240)
    assert ask(patient, wait=True) == "granted"
    waited = time.monotonic() - began
    # The lease's 60 s, less what had run before the kill, plus the repossessor's 5 s loop.
    assert waited < 120, waited
    assert active_slots() == 0

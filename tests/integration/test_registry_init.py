"""Several processes opening one new embedded registry at once (two `conveyor run` on a fresh
state directory): each would run MLflow's schema migrations on the same SQLite file, and they
failed ("table already exists", alembic's "expected to match one row")."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.conftest import ROOT
from tests.servers import BIN, clean_env

OPEN_REGISTRY = """
import sys
from tasks.registry import mlflow_store, model_registry as registry
from tasks.core.settings import Settings
client = mlflow_store.client(Settings(home=sys.argv[1]))
client.search_registered_models(max_results=1)
client.search_experiments(max_results=1)
"""


def test_processes_opening_a_new_registry_at_once_all_succeed(tmp_path: Path) -> None:
    home = tmp_path / "state"
    processes = [
        subprocess.Popen(
            [str(BIN / "python"), "-c", OPEN_REGISTRY, str(home)],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], "\n".join(outputs)[-4000:]
    database = home / "mlflow.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

"""The alias history stays complete while the registered model's tags stay bounded (a real
SQLite MLflow registry)."""

from __future__ import annotations

import pytest

from tasks.core.settings import Settings
from tasks.registry import alias_history, mlflow_store, model_registry


def test_old_moves_are_archived_and_still_read_in_order(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alias_history, "HISTORY_TAGS_KEPT", 5)
    monkeypatch.setattr(alias_history, "HISTORY_BATCH", 3)
    client = mlflow_store.client(settings)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source="file:///m")
    for n in range(20):
        model_registry.move_alias(settings, "m", "champion", 1 + n % 2, f"move {n}", "tester")
    tags = [
        k
        for k in client.get_registered_model("m").tags
        if k.startswith(alias_history.HISTORY_PREFIX)
    ]
    assert 5 <= len(tags) <= 5 + 3  # bounded
    moves = alias_history.moves(settings, "m")
    assert [m.reason for m in moves] == [f"move {n}" for n in range(20)]  # complete, in order
    recent = alias_history.moves(settings, "m", archived=False)
    assert recent == moves[-len(recent) :]
    assert model_registry.alias_version(settings, "m", "champion") == 2

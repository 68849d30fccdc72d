"""Where credentials come from, and the paragraphs refusals become (pure functions)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED, UNAUTHENTICATED

from tasks.core import credentials


def test_configured_key_wins_over_the_generated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "triton" / "admin.key"
    generated = credentials.new_triton_key(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(generated) >= 40
    monkeypatch.delenv(credentials.TRITON_KEY_ENV, raising=False)
    assert credentials.triton_key(str(key_file)) == generated
    monkeypatch.setenv(credentials.TRITON_KEY_ENV, "configured")
    assert credentials.triton_key(str(key_file)) == "configured"
    headers = credentials.triton_grpc_headers(str(key_file))
    assert headers == {"triton-grpc-protocol-conveyor-admin-key": "configured"}
    assert credentials.fingerprint("configured") != credentials.fingerprint(generated)
    assert "configured" not in credentials.fingerprint("configured")


def test_no_key_means_no_header(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(credentials.TRITON_KEY_ENV, raising=False)
    monkeypatch.delenv(credentials.TRITON_KEY_BLOCK_ENV, raising=False)
    assert credentials.triton_http_headers(None) == {}
    assert credentials.triton_http_headers(str(tmp_path / "missing.key")) == {}


def test_half_set_pushgateway_credentials_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(credentials.PUSHGATEWAY_PASSWORD_ENV, raising=False)
    monkeypatch.delenv(credentials.PUSHGATEWAY_USER_ENV, raising=False)
    assert credentials.pushgateway_auth() is None
    monkeypatch.setenv(credentials.PUSHGATEWAY_USER_ENV, "conveyor")
    with pytest.raises(credentials.CredentialError, match="half set"):
        credentials.pushgateway_auth()
    monkeypatch.setenv(credentials.PUSHGATEWAY_PASSWORD_ENV, "pw")
    assert credentials.pushgateway_auth() == ("conveyor", "pw")


@pytest.mark.parametrize(
    ("code", "user", "says"),
    [
        (UNAUTHENTICATED, None, "no credentials were sent"),
        (PERMISSION_DENIED, "reader", "give that user EDIT"),
    ],
)
def test_mlflow_refusals_become_one_paragraph(
    code: int, user: str | None, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if user:
        monkeypatch.setenv(credentials.MLFLOW_USER_ENV, user)
    else:
        monkeypatch.delenv(credentials.MLFLOW_USER_ENV, raising=False)
    exc = MlflowException("API request to endpoint /api/2.0/mlflow/x failed", error_code=code)
    explained = credentials.explain(exc)
    assert explained is not None
    assert says in str(explained) and "/api/2.0/mlflow/x" in str(explained)
    assert credentials.explain(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE)) is None
    assert credentials.explain(ValueError("unrelated")) is None


def test_restriction_flags_cover_every_control_api_on_both_protocols() -> None:
    http, grpc = credentials.triton_restriction_flags("k")
    for flag in (http, grpc):
        apis = flag.split("=", 1)[1].split(":", 1)[0].split(",")
        assert set(apis) == {
            "model-repository",
            "model-config",
            "shared-memory",
            "trace",
            "logging",
        }
        assert flag.endswith(":conveyor-admin-key=k")

"""The edge's configuration (infra/edge.py, infra/nginx/edge.conf), its per-client request count
(infra/edge_metrics.py) and the fleet settings, without a server: nginx only checks the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra import edge, edge_metrics
from tasks.core.settings import Settings
from tasks.serving import replicas

KEY = "k" * 24


def test_keys_parse_from_pairs_or_json() -> None:
    assert edge.parse_keys(f"fraud-api={KEY}, churn_ui={'c' * 30}") == {
        "fraud-api": KEY,
        "churn_ui": "c" * 30,
    }
    assert edge.parse_keys(f'{{"a": "{KEY}"}}') == {"a": KEY}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("fraud-api", "has no key"),
        (f"Fraud={KEY}", "lower-case"),
        ("a=short", "24 to 256"),
        (f"a={KEY},b={KEY}", "share a key"),
        (f'a={KEY[:-1]}"', "24 to 256"),  # a quote would break out of the map's string
    ],
)
def test_bad_keys_name_the_problem_and_the_fix(text: str, says: str) -> None:
    with pytest.raises(edge.EdgeError, match=says):
        edge.parse_keys(text)


def test_no_keys_configured_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(edge.KEYS_ENV, raising=False)
    monkeypatch.delenv(edge.KEYS_BLOCK_ENV, raising=False)
    with pytest.raises(edge.EdgeError, match=edge.KEYS_ENV):
        edge.configured_keys()


def _render(tmp_path: Path, tls: edge.Tls | None, weights: tuple[int, int] = (1, 1)) -> str:
    upstreams = [
        edge.Upstream("127.0.0.1:8000", "127.0.0.1:8001", weights[0]),
        edge.Upstream("127.0.0.1:8010", "127.0.0.1:8011", weights[1]),
    ]
    return edge.render(tmp_path, upstreams, 18443, 18444, tls, 50, 20)


def test_rendered_config_passes_nginx_and_keeps_keys_out_of_it(tmp_path: Path) -> None:
    tls = edge.self_signed(tmp_path)
    config = _render(tmp_path, tls)
    path = edge.write(tmp_path, config, {"alpha": KEY})
    text = path.read_text()
    assert KEY not in text  # keys live in clients.map only
    assert (tmp_path / "clients.map").stat().st_mode & 0o777 == 0o600
    assert f'"Bearer {KEY}" alpha;' in (tmp_path / "clients.map").read_text()
    assert "listen 127.0.0.1:18443 ssl;" in text and "listen 127.0.0.1:18444 ssl http2;" in text
    assert "server 127.0.0.1:8010 weight=1" in text and "server 127.0.0.1:8011 weight=1" in text
    assert "rate=50r/s" in text and "burst=20" in text
    assert r"\.candidate\-v[0-9]+" in text


def test_plain_edge_and_a_replica_weighted_out(tmp_path: Path) -> None:
    config = _render(tmp_path, None, weights=(1, 0))
    assert "ssl" not in config.replace("ssl_", "")
    assert "8010" not in config and "8000" in config
    edge.write(tmp_path, config, {"alpha": KEY})


def test_requests_are_counted_per_client_and_status(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    lines = [
        "2026-12-06T10:00:00+00:00 client=alpha status=200 proto=HTTP/1.1 method=POST path=/x",
        "2026-12-06T10:00:00+00:00 client=alpha status=429 proto=HTTP/1.1 method=POST path=/x",
        "2026-12-06T10:00:00+00:00 client= status=401 proto=HTTP/2.0 method=POST path=/y",
    ]
    log.write_text("\n".join(lines) + "\n2026-12-06T10:00:01+00:00 client=alpha sta")
    collector = edge_metrics.AccessLog(log)

    def samples() -> dict[tuple[str, str], float]:
        [family] = list(collector.collect())
        return {(s.labels["client"], s.labels["code"]): s.value for s in family.samples}

    assert samples() == {("alpha", "200"): 1, ("alpha", "429"): 1, ("anonymous", "401"): 1}
    # The half-written line is counted once it is whole; a rotated log is read from its start.
    with log.open("a") as handle:
        handle.write("tus=200 proto=HTTP/1.1 method=POST path=/x\n")
    assert samples()[("alpha", "200")] == 2
    log.write_text(lines[0] + "\n")
    assert samples()[("alpha", "200")] == 3


def test_replicas_parse_from_pairs_or_json() -> None:
    pairs = Settings(triton_replicas="10.0.0.5:8000/10.0.0.5:8001, 10.0.0.6:8000/10.0.0.6:8001")
    json_form = Settings(triton_replicas='[{"http": "a:8000", "grpc": "a:8001"}]')
    assert [(r.http, r.grpc) for r in pairs.triton_replicas] == [
        ("10.0.0.5:8000", "10.0.0.5:8001"),
        ("10.0.0.6:8000", "10.0.0.6:8001"),
    ]
    assert json_form.triton_replicas[0].grpc == "a:8001"
    assert not pairs.embedded_triton
    names = [r.name for r in replicas.configured(pairs)]
    assert names == ["replica 1 (10.0.0.5:8000)", "replica 2 (10.0.0.6:8000)"]
    # Every replica must be up unless the operator says how many may serve alone.
    assert replicas.needed(pairs) == 2
    assert replicas.needed(pairs.model_copy(update={"triton_min_replicas": 1})) == 1
    assert replicas.needed(pairs.model_copy(update={"triton_min_replicas": 5})) == 2


def test_a_replica_without_its_grpc_address_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="write each replica as http/grpc"):
        Settings(triton_replicas="10.0.0.5:8000")

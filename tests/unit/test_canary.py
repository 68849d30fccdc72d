"""A canary's pieces without servers: the edge routes conveyor writes (checked by nginx itself,
with a route in place), the verdict on what a bake saw, and the spec's limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from infra import edge
from tasks.core.settings import Settings
from tasks.core.spec_release import CanarySpec, PromotionSpec
from tasks.serving import canary, edge_routes

KEY = "k" * 24
LIMITS = CanarySpec(min_requests=20, max_error_rate=0.02, max_p99_ratio=1.5)


def test_routes_are_bucket_files_nginx_checks_and_close(tmp_path: Path) -> None:
    upstreams = [edge.Upstream("127.0.0.1:1", "127.0.0.1:2")]
    config = edge.render(tmp_path, upstreams, 8443, 8444, None, 10, 10)
    assert "1% 99;" in config and "* 100;" in config and ".canary" in config
    edge.write(tmp_path, config, {"alpha": KEY})  # `nginx -t`: raises if nginx refuses it
    settings = Settings(home=tmp_path / "home", edge_routes_dir=tmp_path / edge.ROUTES)
    edge_routes.open_route(settings, "fraud-detector", 0.25)
    edge_routes.open_route(settings, "churn_model", 0.001)  # never nothing: one bucket
    assert edge_routes.open_routes(settings) == ["churn_model", "fraud-detector"]
    routes = tmp_path / edge.ROUTES
    assert sorted(int(p.name) for p in (routes / "fraud-detector").iterdir()) == list(range(1, 26))
    assert [p.name for p in (routes / "churn_model").iterdir()] == ["1"]
    edge_routes.open_route(settings, "fraud-detector", 0.1)  # a share changed in place
    assert len(list((routes / "fraud-detector").iterdir())) == 10
    assert edge_routes.close_route(settings, "fraud-detector")
    assert not edge_routes.close_route(settings, "fraud-detector")
    assert edge_routes.open_routes(settings) == ["churn_model"]


def test_a_canary_without_the_edge_routes_says_how_to_configure_it(tmp_path: Path) -> None:
    with pytest.raises(edge_routes.EdgeRouteError, match="CONVEYOR_EDGE_ROUTES_DIR"):
        edge_routes.open_route(Settings(home=tmp_path), "m", 0.1)
    missing = Settings(home=tmp_path, edge_routes_dir=tmp_path / "nowhere")
    with pytest.raises(edge_routes.EdgeRouteError, match="does not exist"):
        edge_routes.open_route(missing, "m", 0.1)
    assert edge_routes.close_route(Settings(home=tmp_path), "m") is False


def _side(version: int, requests: int, failed: int, p99: float | None) -> canary.Side:
    return canary.Side(
        version=version, requests=requests, failed=failed, probe_answers=requests, p99_ms=p99
    )


def test_errors_withdraw_a_canary_before_the_bake_ends() -> None:
    champion = _side(1, 1000, 1, 5.0)
    failing = _side(2, 40, 10, 5.0)
    assert "failed" in canary.judge(LIMITS, failing, champion, None, final=False)[0]
    # Too few requests for a verdict mid-bake: wait; at the end: no verdict is a refusal.
    assert canary.judge(LIMITS, _side(2, 5, 5, None), champion, None, final=False) == []
    said = canary.judge(LIMITS, _side(2, 5, 0, 5.0), champion, None, final=True)
    assert len(said) == 1 and "min_requests" in said[0]


def test_latency_and_answers_are_judged_over_the_whole_bake() -> None:
    champion = _side(1, 1000, 0, 10.0)
    slow = _side(2, 100, 0, 40.0)
    assert canary.judge(LIMITS, slow, champion, None, final=False) == []
    assert "p99" in canary.judge(LIMITS, slow, champion, None, final=True)[0]
    # Sub-millisecond differences are noise, whatever their ratio.
    fast_pair = canary.judge(LIMITS, _side(2, 100, 0, 0.9), _side(1, 100, 0, 0.3), None, True)
    assert fast_pair == []
    shifted = canary.judge(LIMITS, _side(2, 100, 0, 10.0), champion, 0.6, final=True)
    assert "KS distance 0.600" in shifted[0]
    assert canary.judge(LIMITS, _side(2, 100, 1, 10.0), champion, 0.05, final=True) == []


def test_ks_distance() -> None:
    rng = np.random.default_rng(0)
    same = canary.ks_distance(rng.normal(size=2000), rng.normal(size=2000))
    assert same < 0.06
    assert canary.ks_distance(np.zeros(50), np.ones(50)) == 1.0
    assert canary.ks_distance(rng.normal(size=2000), rng.normal(1.0, size=2000)) > 0.3


def test_canary_limits_are_checked_and_direct_is_the_default() -> None:
    assert PromotionSpec().rollout == "direct"
    with pytest.raises(ValidationError, match="share"):
        PromotionSpec.model_validate({"rollout": "canary", "canary": {"share": 0.9}})
    with pytest.raises(ValidationError, match="rollout"):
        PromotionSpec.model_validate({"rollout": "blue-green"})

from prometheus_client import generate_latest

from tasks.core import pushgateway
from tasks.core.errors import ConveyorError
from tasks.datasets.quality import DataQualityError
from tasks.modeling.evaluation import GateError


def exposition(obs: pushgateway.Observation, carried: pushgateway.Carried) -> str:
    return generate_latest(pushgateway.build_registry(obs, 1.5, {"train": 0.5}, carried)).decode()


def test_counters_start_at_zero_for_every_outcome_and_carry_forward() -> None:
    obs = pushgateway.Observation(model="m", flow="release")
    first = exposition(obs, {})
    assert 'conveyor_flow_runs_total{outcome="completed"} 1.0' in first
    assert 'conveyor_flow_runs_total{outcome="failed"} 0.0' in first
    carried = {
        ("conveyor_flow_runs_total", frozenset({("outcome", "completed")})): 5.0,
        ("conveyor_flow_runs_total", frozenset({("outcome", "failed")})): 2.0,
    }
    obs.outcome = "failed"
    again = exposition(obs, carried)
    assert 'conveyor_flow_runs_total{outcome="completed"} 5.0' in again
    assert 'conveyor_flow_runs_total{outcome="failed"} 3.0' in again
    assert 'conveyor_task_duration_seconds{task="train"} 0.5' in again


def test_a_gate_failure_counts_the_earlier_gates_as_passed() -> None:
    obs = pushgateway.Observation(model="m", flow="release")
    obs.failed(GateError("worse than the champion"), pushgateway.GATES)
    assert obs.outcome == "failed"
    assert obs.gates == {"data_quality": "pass", "model_validation": "fail"}
    text = exposition(obs, {})
    assert 'conveyor_gate_decisions_total{decision="fail",gate="model_validation"} 1.0' in text
    assert 'conveyor_gate_decisions_total{decision="pass",gate="swap"} 0.0' in text


def test_failures_that_are_not_gates_count_no_gate() -> None:
    obs = pushgateway.Observation(model="m", flow="release")
    obs.failed(ConveyorError("Triton unreachable"), pushgateway.GATES)
    assert obs.gates == {}
    assert pushgateway.failed_gate(DataQualityError("nulls")) == "data_quality"


def test_gateway_urls() -> None:
    assert pushgateway.gateway_problem("http://127.0.0.1:9091") is None
    assert pushgateway.gateway_problem("127.0.0.1:9091") is None
    assert "malformed port" in str(pushgateway.gateway_problem("http://host:99x"))
    assert "is not an http(s)" in str(pushgateway.gateway_problem("ftp://host:21"))

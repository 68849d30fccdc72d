from tasks.serving.traffic import LoadResult
from tasks.serving.tuning import TuningTrial, choose


def trial(delay: int, count: int, rps: float, p99: float, errors: int = 0) -> TuningTrial:
    load = LoadResult(
        concurrency=8, requests=1000, errors=errors, throughput_rps=rps, p50_ms=1.0, p99_ms=p99
    )
    return TuningTrial(max_queue_delay_microseconds=delay, instance_count=count, load=load)


def test_best_throughput_within_the_budget_wins() -> None:
    trials = [trial(0, 1, 1000, 4.0), trial(100, 2, 1500, 6.0), trial(500, 2, 2000, 12.0)]
    best, within = choose(trials, budget_ms=8.0)
    assert (best.max_queue_delay_microseconds, best.instance_count, within) == (100, 2, True)


def test_a_configuration_with_errors_is_never_chosen() -> None:
    trials = [trial(0, 1, 1000, 4.0), trial(100, 2, 3000, 2.0, errors=3)]
    best, _ = choose(trials, budget_ms=8.0)
    assert best.key == "q0_i1"


def test_nothing_within_budget_falls_back_to_the_lowest_p99_and_says_so() -> None:
    trials = [trial(0, 1, 1000, 40.0), trial(500, 2, 2000, 30.0)]
    best, within = choose(trials, budget_ms=8.0)
    assert (best.key, within) == ("q500_i2", False)

"""The release's steps as plain function calls, without Prefect: the baseline for what
orchestration costs. Same functions, same order, same parallel trials (a thread pool instead of
Prefect's task runner); no flow runs, task runs, result persistence, artifacts or events.

    .venv/bin/python -m bench.plain SPEC   (prints one JSON line: seconds per step)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.datasets.data import load_dataset, snapshot, split_dataset
from tasks.datasets.quality import check_frame, require_quality
from tasks.modeling.evaluation import require_valid
from tasks.modeling.onnx_export import export_onnx
from tasks.modeling.search import run_search, run_trial
from tasks.modeling.training import train_candidate
from tasks.modeling.validation import validate
from tasks.registry import model_registry, tracking
from tasks.serving.rollout import publish, serve_candidate
from tasks.serving.smoke import require_passed, smoke_test
from tasks.serving.swap import swap_in
from tasks.serving.tuning import record, tune


def release(spec_path: str) -> dict[str, float]:
    settings, spec = Settings(), load_spec(spec_path)
    seconds: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - started

    with step("snapshot-data"):
        data = snapshot(spec, settings)
    with step("validate-data"):
        quality = check_frame(load_dataset(data.uri), spec, data.sha256)
        tracking.log_data_validation(settings, spec.name, data, quality.passed, quality.markdown())
        require_quality(quality, data.uri)
    with step("split-data"):
        parts = split_dataset(spec, settings, data)
    with step("open-candidate-run"):
        run = tracking.open_run(settings, spec.name, f"train-{spec.name}", {})
    with step("trials"), ThreadPoolExecutor(spec.search.parallel) as pool:
        search = run_search(
            spec, settings, parts, run.run_id, lambda *args: pool.submit(run_trial, *args)
        )
    seconds["trial"] = sum((t.finished_at - t.started_at).total_seconds() for t in search.trials)
    with step("train-candidate"):
        train = train_candidate(spec, settings, parts, run, search, "")
    with step("validate-candidate"):
        validation = validate(settings, spec, train)
        tracking.log_to_run(settings, train.run_id, tags=validation.tags())
        require_valid(validation)
    with step("register-challenger"):
        tags = train.lineage | validation.tags()
        ref = model_registry.register_challenger(settings, spec.name, train.candidate, tags)
    with step("export-onnx"):
        onnx = export_onnx(settings, spec, ref, train.holdout)
    with step("publish-version"):
        publish(settings, spec, ref, onnx)
    with step("tune-serving"):
        tuning = tune(settings, spec, ref, train.holdout)
        record(settings, ref, tuning)
    with step("serve-candidate"):
        serve_candidate(settings, spec, ref, tuning.chosen)
    with step("smoke-test"):
        require_passed(smoke_test(settings, spec, ref, train.holdout))
    with step("swap-in"):
        swap_in(settings, spec, ref, train.holdout)
    with step("promote"):
        model_registry.promote(
            settings, ref, "benchmark without Prefect", model_registry.default_actor()
        )
    return seconds


if __name__ == "__main__":
    print(json.dumps(release(sys.argv[1])), flush=True)

"""What locking Triton's control APIs costs callers: inference on the embedded server started as
conveyor starts it (restricted model-control APIs, key header) against the same server without
the restriction flags, same model, alternating rounds so drift on the shared machine hits both.

    .venv/bin/python -m bench.control_key
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from bench.common import ROOT, write_results
from tasks.core import credentials
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.core.storage import LocalStore
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import convert
from tasks.modeling.training import build_pipeline
from tasks.serving import rollout, triton_client, triton_server
from tasks.serving.traffic import measure

RESULT = ROOT / "bench-results" / "control_key.json"


class KeyRow(BaseModel):
    server: str  # "restricted" (as conveyor runs it) or "open" (baseline)
    clients: int
    rounds: int
    requests: int
    throughput_rps: float  # median over rounds
    p50_ms: float
    p99_ms: float
    control_call_ms: float  # median of keyed repository-index calls (restricted) / open ones


def _start(home: Path, repository: Path, restricted: bool) -> Settings:
    settings = Settings(home=home, model_repository=str(repository))
    if restricted:
        triton_server.start(settings)
        return settings
    # The baseline is the same server without the restriction flags: nothing in conveyor can
    # start one, so the flags are taken away for this one start.
    flags = credentials.triton_restriction_flags
    credentials.triton_restriction_flags = lambda key: []  # type: ignore[assignment]
    try:
        triton_server.start(settings)
    finally:
        credentials.triton_restriction_flags = flags
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = load_spec(DEFAULT_SPEC)
    frame = generate_transactions(5000, seed=3, fraud_rate=0.05)
    features = to_features(frame, spec)
    model = build_pipeline(spec, {"n_estimators": 100, "max_depth": 12})
    onnx_bytes = convert(model.fit(features, to_target(frame, spec)), spec.n_features)
    rows = features[:500].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        rollout.publish_version(
            LocalStore(repository), str(repository), spec, 1, onnx_bytes, "python"
        )
        servers = {
            name: _start(Path(tmp) / name, repository, name == "restricted")
            for name in ("restricted", "open")
        }
        results: dict[str, list] = {name: [] for name in servers}
        control: dict[str, list[float]] = {name: [] for name in servers}
        try:
            for settings in servers.values():
                endpoint = triton_server.endpoint(settings)
                triton_client.load_versions(endpoint, spec, "python", [1], timeout_s=120)
            for _ in range(args.rounds):
                for name, settings in servers.items():
                    endpoint = triton_server.endpoint(settings)
                    results[name].append(
                        measure(endpoint, spec.name, rows, "", args.clients, args.requests)
                    )
                    client = triton_client.control_client(endpoint)
                    for _ in range(50):
                        began = time.perf_counter()
                        client.index()
                        control[name].append((time.perf_counter() - began) * 1000)
        finally:
            for settings in servers.values():
                triton_server.stop(settings)
    rows_out = [
        KeyRow(
            server=name,
            clients=args.clients,
            rounds=args.rounds,
            requests=args.requests,
            throughput_rps=statistics.median(r.throughput_rps for r in loads),
            p50_ms=statistics.median(r.p50_ms for r in loads),
            p99_ms=statistics.median(r.p99_ms for r in loads),
            control_call_ms=statistics.median(control[name]),
        )
        for name, loads in results.items()
    ]
    write_results(RESULT, rows_out)
    for row in rows_out:
        print(row.model_dump_json())


if __name__ == "__main__":
    main()

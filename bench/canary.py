"""What callers see while a fleet changes version behind the edge: a swap on both replicas, a
canary that is withdrawn (a model that fails ~40 % of rows, `bench.faults`) and one that is
promoted, each under a wrk load of callers through the edge (TLS, a client key).

    .venv/bin/python -m bench.canary --out bench-results/canary.json

The swap, the bake and the withdrawal are conveyor's own functions (`swap.swap_in`,
`canary.bake`, `rollout.withdraw`) on two real Triton replicas, a real nginx and an MLflow
registry of its own; the release flow around them (training, gates) is left out, so the figures
are the serving change alone.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from pathlib import Path

from pydantic import BaseModel

from bench.common import ROOT, write_results
from bench.faults import failing_version
from bench.serving import ROW, Row, wrk_during
from infra import edge
from tasks.core import credentials
from tasks.core.settings import Settings, TritonAddress
from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.core.spec_release import CanarySpec, PromotionSpec
from tasks.core.storage import open_store
from tasks.datasets.data import DatasetRef, save_dataset, to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import INPUT, convert
from tasks.modeling.training import build_pipeline
from tasks.registry import mlflow_store, model_registry
from tasks.serving import canary, rollout, swap, triton_server
from tasks.serving.triton_ports import HOST

RATE = 100_000  # per client: out of reach (the limit is test_edge's)
ACTOR = "bench.canary"


class ChangeRow(BaseModel):
    scenario: str
    seconds: float  # of the change: the swap's load, the canary's bake until its verdict
    callers: Row  # wrk through the edge for the whole change
    probe_failed: int | None = None
    swap_p99_ratio: float | None = None
    reached_candidate: int | None = None  # requests Triton's statistics count at the candidate
    candidate_failed: int | None = None
    verdict: str = ""


def _onnx(spec: ModelSpec, seed: int) -> bytes:
    frame = generate_transactions(4000, seed=seed, fraud_rate=0.05)
    fitted = build_pipeline(spec).fit(to_features(frame, spec), to_target(frame, spec))
    return convert(fitted, spec.n_features)


def _register(settings: Settings, spec: ModelSpec, versions: int) -> list[model_registry.ModelRef]:
    """Registry versions 1..n (no runs: nothing here trains through MLflow), v1 champion."""
    client = mlflow_store.client(settings)
    client.create_registered_model(spec.name)
    refs = []
    for _ in range(versions):
        made = client.create_model_version(spec.name, source=str(settings.home / "none"))
        refs.append(
            model_registry.ModelRef(
                name=spec.name, version=int(made.version), run_id="", model_uri="none"
            )
        )
    model_registry.promote(settings, refs[0], "the benchmark's first champion", ACTOR)
    return refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="wrk connections through the edge")
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--bake", type=float, default=20.0, help="seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "canary.json")
    args = parser.parse_args()

    limits = CanarySpec(share=args.share, bake_s=args.bake, min_requests=50, probe_clients=2)
    spec = load_spec(DEFAULT_SPEC).model_copy(
        update={"promotion": PromotionSpec(rollout="canary", canary=limits)}
    )
    body = json.dumps(
        {"inputs": [{"name": INPUT, "shape": [1, len(ROW)], "datatype": "FP32", "data": ROW}]}
    )
    rows: list[ChangeRow] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        repository = str(tmp / "repository")
        os.environ[credentials.TRITON_KEY_ENV] = secrets.token_urlsafe(32)
        members = [Settings(home=tmp / f"r{i}", model_repository=repository) for i in (1, 2)]
        try:
            states = [triton_server.start(m) for m in members]
            keys = {"conveyor": secrets.token_urlsafe(32), "bench": secrets.token_urlsafe(32)}
            os.environ[credentials.EDGE_KEY_ENV] = keys["conveyor"]
            upstreams = [edge.Upstream(s.endpoint.http, s.endpoint.grpc) for s in states]
            tls = edge.self_signed(tmp)
            with edge.serve(tmp / "edge", upstreams, keys, tls, RATE, RATE) as (http, grpc):
                settings = Settings(
                    home=tmp / "state",
                    model_repository=repository,
                    triton_replicas=[
                        TritonAddress(http=s.endpoint.http, grpc=s.endpoint.grpc) for s in states
                    ],
                    edge_http_url=f"{HOST}:{http}",
                    edge_grpc_url=f"{HOST}:{grpc}",
                    edge_ca_file=tls.trusted,
                    edge_routes_dir=tmp / "edge" / edge.ROUTES,
                )
                callers = (
                    f"https://{HOST}:{http}/v2/models/{spec.name}/infer",
                    body,
                    args.clients,
                )
                auth = {"Authorization": f"Bearer {keys['bench']}"}
                rows = _changes(settings, spec, tmp, callers, auth, str(tls.trusted))
        finally:
            for member in members:
                triton_server.stop(member)
    for row in rows:
        print(row.model_dump_json(), flush=True)
    write_results(args.out, rows)


def _changes(
    settings: Settings,
    spec: ModelSpec,
    tmp: Path,
    callers: tuple[str, str, int],
    auth: dict[str, str],
    ca_file: str,
) -> list[ChangeRow]:
    store = open_store(settings.repository)
    good = [_onnx(spec, seed) for seed in (5, 6)]
    # v3: the failing one; v4: v2 retrained on its own data, a canary that should pass (another
    # sample of 4,000 synthetic rows moves this small forest's scores past the default KS limit).
    versions = [good[0], good[1], None, good[1]]
    refs = _register(settings, spec, len(versions))
    for ref, onnx in zip(refs, versions, strict=True):
        files = rollout.version_files(onnx, "python") if onnx else failing_version(good[1])
        store.publish_dir(f"{spec.name}/{ref.version}", files)
    rollout.go_live(settings, spec, [1])
    frame = generate_transactions(1000, seed=11, fraud_rate=0.05)
    holdout = save_dataset(frame, tmp, "holdout", spec.target.name)
    url, body, clients = callers
    rows = []

    with wrk_during(url, body, clients, "swap", tmp, auth, ca_file) as load:
        report = swap.swap_in(settings, spec, refs[1], holdout)
    model_registry.promote(settings, refs[1], "swapped in", ACTOR)
    rows.append(
        ChangeRow(
            scenario="swap v1 → v2 on both replicas",
            seconds=report.load_seconds,
            callers=load[0],
            probe_failed=len(report.errors),
            swap_p99_ratio=report.p99_ratio,
            verdict=report.summary(),
        )
    )
    for ref, what in ((refs[2], "fails ~40 % of rows"), (refs[3], "v2 retrained on its data")):
        rows.append(_canary(settings, spec, ref, what, holdout, callers, auth, ca_file, tmp))
    return rows


def _canary(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    what: str,
    holdout: DatasetRef,
    callers: tuple[str, str, int],
    auth: dict[str, str],
    ca_file: str,
    tmp: Path,
) -> ChangeRow:
    """A canary bake of `ref` under load, then what a release does with the verdict: withdraw,
    or swap in and promote."""
    url, body, clients = callers
    rollout.serve_candidate(settings, spec, ref)
    with wrk_during(url, body, clients, f"canary v{ref.version}", tmp, auth, ca_file) as load:
        report = canary.bake(settings, spec, ref, holdout)
    if report.problems:
        rollout.withdraw(settings, spec, ref)
        scenario = f"canary v{ref.version} ({what}): withdrawn"
    else:
        swap.swap_in(settings, spec, ref, holdout)
        model_registry.promote(settings, ref, "canary passed", ACTOR)
        scenario = f"canary v{ref.version} ({what}): promoted"
    return ChangeRow(
        scenario=scenario,
        seconds=report.baked_s,
        callers=load[0],
        probe_failed=report.probe_failures,
        reached_candidate=report.candidate.requests,
        candidate_failed=report.candidate.failed,
        verdict=report.summary(),
    )


if __name__ == "__main__":
    main()

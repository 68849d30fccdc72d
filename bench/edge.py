"""What the edge costs: throughput and p99 at concurrency 1/8/32 straight to one Triton replica
against through the edge (nginx) balancing two replicas, plain and with TLS and a client key.

    .venv/bin/python -m bench.edge --out bench-results/edge.json

Every row is `wrk --latency` with a batch-1 JSON body for `--seconds`; wrk, nginx and both
replicas share this machine's cores (2 in CI), so the edge's cost here includes the CPU it takes
from the replicas, which separate hosts would not pay.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from pathlib import Path

from bench.common import ROOT, write_results
from bench.serving import ROW, Row, keep, wrk
from infra import edge
from tasks.core import credentials
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.core.storage import LocalStore
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import INPUT, convert
from tasks.modeling.training import build_pipeline
from tasks.serving import rollout, triton_client, triton_server
from tasks.serving.triton_ports import HOST

RATE = 100_000  # per client: a limit the benchmark never reaches (the limit is test_edge's)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "edge.json")
    args = parser.parse_args()

    spec = load_spec(DEFAULT_SPEC)
    frame = generate_transactions(4000, seed=5, fraud_rate=0.05)
    fitted = build_pipeline(spec).fit(to_features(frame, spec), to_target(frame, spec))
    onnx = convert(fitted, spec.n_features)
    body = json.dumps(
        {"inputs": [{"name": INPUT, "shape": [1, len(ROW)], "datatype": "FP32", "data": ROW}]}
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        repository = tmp / "repository"
        rollout.publish_version(LocalStore(repository), str(repository), spec, 1, onnx, "python")
        # The operator's control key, as every replica of a fleet is started with it.
        os.environ[credentials.TRITON_KEY_ENV] = secrets.token_urlsafe(32)
        members = [Settings(home=tmp / f"r{i}", model_repository=str(repository)) for i in (1, 2)]
        try:
            states = [triton_server.start(m) for m in members]
            for state in states:
                triton_client.load_versions(state.endpoint, spec, "python", [1], timeout_s=120)
            upstreams = [edge.Upstream(s.endpoint.http, s.endpoint.grpc) for s in states]
            key = secrets.token_urlsafe(32)
            auth = {"Authorization": f"Bearer {key}"}
            tls = edge.self_signed(tmp)
            path = f"/v2/models/{spec.name}/infer"
            with (
                edge.serve(tmp / "plain", upstreams, {"bench": key}, None, RATE, RATE) as plain,
                edge.serve(tmp / "tls", upstreams, {"bench": key}, tls, RATE, RATE) as secure,
            ):
                for c in args.concurrency:
                    direct = f"http://{states[0].endpoint.http}{path}"
                    keep(rows, wrk(direct, body, c, args.seconds, "one replica, direct", tmp))
                    keep(
                        rows,
                        wrk(
                            f"http://{HOST}:{plain[0]}{path}", body, c, args.seconds,
                            "edge, 2 replicas, plain", tmp, auth,
                        ),
                    )  # fmt: skip
                    keep(
                        rows,
                        wrk(
                            f"https://{HOST}:{secure[0]}{path}", body, c, args.seconds,
                            "edge, 2 replicas, TLS", tmp, auth, str(tls.trusted),
                        ),
                    )  # fmt: skip
        finally:
            for member in members:
                triton_server.stop(member)
    write_results(args.out, rows)


if __name__ == "__main__":
    main()

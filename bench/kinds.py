"""Every kind of model, from one run: release wall time of each shipped spec, then the served
table (batch 1, concurrency 1/8/32) of a binary, a multiclass and a regression model, each
beside a no-op model with its own I/O on the same Triton (the server's ceiling for that contract).

    .venv/bin/python -m bench.kinds --seconds 5 --out bench-results/kinds.json

Each release is a fresh `conveyor run --spec` process timed from outside (interpreter, imports and
the ephemeral Prefect API's start included), one after another on one state directory. The HTTP
rows are `wrk --latency` with a batch-1 JSON body of a real holdout row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from bench.serving import wrk

SHIPPED = ["fraud-detector", "credit-default", "churn", "merchant-category", "loss-given-default"]
SERVED = ["fraud-detector", "merchant-category", "loss-given-default"]

# A python-backend model that answers zeros in every output its config declares: what Triton
# itself costs per request for that contract (label + probabilities[k], or prediction).
NOOP_MODEL = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"]), o["dims"])
            for o in config["output"]
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "features").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor(name, np.zeros((n, *[int(d) for d in dims]), dtype))
                for name, dtype, dims in self.outputs
            ]))
        return responses
"""


class Release(BaseModel):
    kind: str = "release"
    model: str
    task: str
    family: str
    rows: int
    wall_s: float
    exit_code: int


class Served(BaseModel):
    kind: str = "served"
    model: str
    task: str
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    noop_rps: float
    noop_p99_ms: float
    command: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "kinds.json")
    args = parser.parse_args()

    import os

    from tasks.core.settings import Settings
    from tasks.core.spec import SPEC_DIR, load_spec
    from tasks.datasets.data import load_dataset, to_features
    from tasks.registry import model_registry, tracking
    from tasks.serving import triton_client, triton_server

    results: list[BaseModel] = []
    with tempfile.TemporaryDirectory() as tmp_name, isolated(Path(tmp_name)) as env:
        tmp = Path(tmp_name)
        os.environ.update(CONVEYOR_HOME=env["CONVEYOR_HOME"])
        for name in SHIPPED:
            spec = load_spec(ROOT / SPEC_DIR / f"{name}.yaml")
            began = time.perf_counter()
            done = subprocess.run(
                [CONVEYOR, "run", "--spec", str(ROOT / SPEC_DIR / f"{name}.yaml")],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            row = Release(
                model=name,
                task=spec.task.value,
                family=spec.estimator.family,
                rows=spec.data.rows,
                wall_s=time.perf_counter() - began,
                exit_code=done.returncode,
            )
            print(row.model_dump_json(), flush=True)
            if done.returncode:
                raise RuntimeError(f"{name} did not release:\n{done.stdout[-3000:]}")
            results.append(row)

        settings = Settings()
        endpoint = triton_server.endpoint(settings)
        control = triton_client.control_client(endpoint)
        http = f"http://{endpoint.http}/v2/models"
        for name in SERVED:
            spec = load_spec(ROOT / SPEC_DIR / f"{name}.yaml")
            champion = model_registry.alias_version(settings, name, model_registry.CHAMPION)
            assert champion is not None
            ref = model_registry.version_ref(settings, name, champion)
            holdout = tracking.run_tag(settings, ref.run_id, tracking.TAG_HOLDOUT_URI)
            row_values = to_features(load_dataset(holdout), spec)[0].tolist()
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "features",
                            "shape": [1, spec.n_features],
                            "datatype": "FP32",
                            "data": row_values,
                        }
                    ]
                }
            )
            # The no-op twin: the champion's served configuration, nothing inside.
            config = control.config(name)
            noop = f"noop-{name}"
            config["name"] = noop
            config.pop("version_policy", None)
            control.load(noop, json.dumps(config), {"file:1/model.py": NOOP_MODEL.encode()})
            for c in args.concurrency:
                ours = wrk(f"{http}/{name}/infer", body, c, args.seconds, name, tmp)
                ceiling = wrk(f"{http}/{noop}/infer", body, c, args.seconds, noop, tmp)
                served = Served(
                    model=name,
                    task=spec.task.value,
                    concurrency=c,
                    throughput_rps=ours.throughput_rps,
                    p50_ms=ours.p50_ms,
                    p99_ms=ours.p99_ms,
                    errors=ours.errors + ceiling.errors,
                    noop_rps=ceiling.throughput_rps,
                    noop_p99_ms=ceiling.p99_ms,
                    command=ours.command,
                )
                print(served.model_dump_json(), flush=True)
                results.append(served)
            control.unload(noop)
    write_results(args.out, results)


if __name__ == "__main__":
    main()

"""Serving throughput and latency, side by side in one run: the released fraud model through
conveyor's Triton (HTTP with wrk, gRPC with a client loop) against what users would pick instead.

    .venv/bin/python -m bench.serving --out bench-results/serving.json

Every HTTP row is `wrk --latency` with a batch-1 JSON body for `--seconds` per concurrency; every
in-process or gRPC row is a closed loop of `c` threads. Client and server share this machine's
cores, as they would on a single-host deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, add_state_argument, isolated, write_results
from tasks.core.spec import DEFAULT_SPEC
from tests.servers import free_port

ROW = [120.5, 14.0, 0.0, 0.2, 0.3, 400.0, 3.0, 12.0, 1.0, 1.0]

NOOP_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Same I/O as the fraud model, no model: what the server itself costs per request."""

    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "features").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("label", np.zeros((n, 1), np.int64)),
                pb_utils.Tensor("probabilities", np.zeros((n, 2), np.float32)),
            ]))
        return responses
'''

FASTAPI_APP = """
import pickle
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = pickle.loads(Path(__file__).with_name("model.pkl").read_bytes())
app = FastAPI()


class Rows(BaseModel):
    rows: list[list[float]]


@app.post("/predict")
def predict(body: Rows) -> dict:
    return {"probabilities": model.predict_proba(np.asarray(body.rows, dtype=np.float32)).tolist()}
"""


class Row(BaseModel):
    target: str
    protocol: str
    concurrency: int
    requests: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    command: str


def wrk(
    url: str,
    body: str,
    concurrency: int,
    seconds: int,
    target: str,
    tmp: Path,
    headers: dict[str, str] | None = None,
    ca_file: str | None = None,
) -> Row:
    """`headers`: sent with every request (a client key; kept in the script file, never in the
    recorded command). `ca_file`: the https URL's certificate, checked by the first request."""
    command = _wrk_command(url, body, concurrency, f"{seconds}s", target, tmp, headers, ca_file)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return _wrk_row(out, command, target, concurrency, url)


@contextmanager
def wrk_during(
    url: str,
    body: str,
    concurrency: int,
    target: str,
    tmp: Path,
    headers: dict[str, str] | None = None,
    ca_file: str | None = None,
) -> Iterator[list[Row]]:
    """wrk for as long as the block runs (stopped with SIGINT, on which it reports); the row is
    in the yielded list once the block is over."""
    command = _wrk_command(url, body, concurrency, "3600s", target, tmp, headers, ca_file)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found: list[Row] = []
    try:
        time.sleep(0.5)  # connected and sending before the block starts what it measures
        yield found
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    found.append(_wrk_row(out, command, target, concurrency, url))


def _wrk_command(
    url: str,
    body: str,
    concurrency: int,
    duration: str,
    target: str,
    tmp: Path,
    headers: dict[str, str] | None,
    ca_file: str | None,
) -> list[str]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    # A wrong body would benchmark error responses: one request must succeed first.
    verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    check = httpx.post(url, content=body, headers=headers, timeout=10, verify=verify)
    if check.status_code != 200:
        raise RuntimeError(f"{target}: {url} answered {check.status_code}: {check.text[:300]}")
    script = tmp / f"{re.sub(r'[^A-Za-z0-9]+', '_', target)}.lua"
    # A level-2 long bracket: JSON bodies contain `]]`, which would end a plain [[...]] string.
    script.write_text(
        'wrk.method = "POST"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        + f"wrk.body = [==[{body}]==]\n"
    )
    threads = min(concurrency, 2)
    return [
        "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}", "--latency", "-s", str(script),
        url,
    ]  # fmt: skip


def _wrk_row(out: str, command: list[str], target: str, concurrency: int, url: str) -> Row:
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    elapsed = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    assert elapsed is not None
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0}[elapsed.group(2)]
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non_2xx.group(1))
    if sockets := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in sockets.groups())
    return Row(
        target=target,
        protocol="HTTP (wrk)",
        concurrency=concurrency,
        requests=requests,
        seconds=float(elapsed.group(1)) * scale,
        throughput_rps=requests / (float(elapsed.group(1)) * scale),
        p50_ms=_wrk_ms(out, "50%"),
        p99_ms=_wrk_ms(out, "99%"),
        errors=errors,
        command=" ".join(command[:-3]) + f" -s <batch-1 body> {url}",
    )


def _wrk_ms(out: str, percentile: str) -> float:
    found = re.search(rf"{re.escape(percentile)}\s+([\d.]+)(us|ms|s)", out)
    assert found is not None, out
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


def closed_loop(
    call: Callable[[], None], concurrency: int, seconds: int, target: str, protocol: str
) -> Row:
    """`concurrency` threads calling back to back for `seconds`; latency of every call."""
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def loop(index: int) -> None:
        while (start := time.perf_counter()) < stop:
            try:
                call()
            except Exception:
                errors[index] += 1
                continue
            latencies[index].append(time.perf_counter() - start)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    every = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
    return Row(
        target=target,
        protocol=protocol,
        concurrency=concurrency,
        requests=len(every),
        seconds=elapsed,
        throughput_rps=len(every) / elapsed,
        p50_ms=float(np.percentile(every, 50)),
        p99_ms=float(np.percentile(every, 99)),
        errors=sum(errors),
        command=f"python -m bench.serving ({protocol}, {concurrency} threads)",
    )


def grpc_caller(url: str, model: str, features: np.ndarray) -> Callable[[], None]:
    """A batch-1 gRPC infer with one client (channel) per thread."""
    import tritonclient.grpc as grpcclient

    local = threading.local()

    def call() -> None:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("features", list(features.shape), "FP32")
        inp.set_data_from_numpy(features)
        local.client.infer(model, [inp])

    return call


@contextmanager
def server(command: list[str], env: dict[str, str], ready: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(ready, timeout=2).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 15)
                process.wait(30)


def keep(rows: list[Row], row: Row) -> None:
    print(row.model_dump_json(), flush=True)
    rows.append(row)


def release(base: Path, env: dict[str, str]) -> Path:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    spec = base / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    subprocess.run([CONVEYOR, "run", "--spec", str(spec)], env=env, cwd=ROOT, check=True)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=int, default=10)
    add_state_argument(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "serving.json")
    args = parser.parse_args()

    import onnxruntime as ort

    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.registry import model_registry, tracking
    from tasks.serving import triton_client, triton_server

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name, isolated(Path(tmp_name), args.state) as env:
        tmp = Path(tmp_name)
        os.environ.update(CONVEYOR_HOME=env["CONVEYOR_HOME"])
        if args.state:
            subprocess.run([CONVEYOR, "triton", "up"], env=env, cwd=ROOT, check=True)
            spec = load_spec(DEFAULT_SPEC)
        else:
            spec = load_spec(release(tmp, env))
        settings = Settings()
        endpoint = triton_server.endpoint(settings)
        version = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
        assert version is not None
        ref = model_registry.version_ref(settings, spec.name, version)
        # The no-op model: the champion's served configuration, nothing inside.
        control = triton_client.control_client(endpoint)
        config = control.config(spec.name)
        config["name"] = "noop"
        config.pop("version_policy", None)
        control.load("noop", json.dumps(config), {"file:1/model.py": NOOP_MODEL.encode()})
        triton_body = json.dumps(
            {"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": ROW}]}
        )
        http = f"http://{endpoint.http}/v2/models"
        for c in args.concurrency:
            keep(rows, wrk(f"{http}/{spec.name}/infer", triton_body, c, args.seconds,
                            "conveyor Triton", tmp))  # fmt: skip
            keep(rows, wrk(f"{http}/noop/infer", triton_body, c, args.seconds,
                            "no-op model, same Triton", tmp))  # fmt: skip

        features = np.asarray([ROW], dtype=np.float32)
        for target, name in (
            ("conveyor Triton", spec.name),
            ("no-op model, same Triton", "noop"),
        ):
            for c in args.concurrency:
                call = grpc_caller(endpoint.grpc, name, features)
                keep(rows, closed_loop(call, c, args.seconds, target, "gRPC (python loop)"))

        onnx_bytes = tracking.read_artifact(
            settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}"
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        for c in args.concurrency:
            keep(rows, closed_loop(
                lambda: session.run(None, {"features": features}), c, args.seconds,
                "onnxruntime in-process", "in-process (threads)",
            ))  # fmt: skip

        # What users would pick instead, given the same model and the same cores.
        model = tracking.load_model(settings, ref.model_uri)
        import pickle

        (tmp / "model.pkl").write_bytes(pickle.dumps(model))
        (tmp / "app.py").write_text(FASTAPI_APP)
        port = free_port()
        fastapi_cmd = [
            str(Path(sys.executable).parent / "uvicorn"), "app:app", "--app-dir", str(tmp),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level",
            "warning",
        ]  # fmt: skip
        with server(fastapi_cmd, env, f"http://127.0.0.1:{port}/docs", tmp / "fastapi.log"):
            body = json.dumps({"rows": [ROW]})
            for c in args.concurrency:
                keep(rows, wrk(f"http://127.0.0.1:{port}/predict", body, c, args.seconds,
                                "FastAPI + pickle (2 workers)", tmp))  # fmt: skip
        port = free_port()
        mlflow_cmd = [
            str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
            ref.model_uri, "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port),
            "-w", "2",
        ]  # fmt: skip
        menv = {**env, "MLFLOW_TRACKING_URI": settings.tracking_uri}
        with server(mlflow_cmd, menv, f"http://127.0.0.1:{port}/ping", tmp / "mlflow.log"):
            body = json.dumps({"inputs": [ROW]})
            for c in args.concurrency:
                keep(rows, wrk(f"http://127.0.0.1:{port}/invocations", body, c, args.seconds,
                                "mlflow models serve (2 workers)", tmp))  # fmt: skip
    write_results(args.out, rows)


if __name__ == "__main__":
    main()

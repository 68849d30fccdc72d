"""MLflow's request metrics for Prometheus, served from the server's multiprocess directory.

`mlflow server --expose-prometheus DIR` writes its metrics (prometheus-flask-exporter, one file
per worker process) into DIR and serves them on its own `/metrics`. Behind `--app-name
basic-auth` that route is admin-only: MLflow 3 denies every route it has no permission rule
for (`MLFLOW_BASIC_AUTH_FAIL_CLOSED`), so Prometheus scraping as the read-only user got 403 on
every scrape and MLflow's metrics were silently missing. Giving Prometheus the admin password
would hand every reader of its config the registry. This exporter reads the same directory and
serves only those metrics, unauthenticated like Triton's metrics port, beside the server (a
sidecar sharing the directory in compose; a process of `make stack` on loopback).

    python -m infra.mlflow_metrics --dir DIR --host 127.0.0.1 --port 9102
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path


def serve(directory: Path, host: str, port: int) -> None:
    # prometheus_client reads the variable when its multiprocess module is used.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    serve_registry(registry, host, port)


def serve_registry(registry: object, host: str, port: int) -> None:
    """Serve `registry` on host:port until SIGTERM or SIGINT (the sidecars' main loop)."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)  # type: ignore[arg-type]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="mlflow's --expose-prometheus DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9102)
    args = parser.parse_args()
    if not args.dir.is_dir():
        parser.error(f"{args.dir} is not a directory: pass mlflow server's --expose-prometheus DIR")
    serve(args.dir, args.host, args.port)


if __name__ == "__main__":
    main()

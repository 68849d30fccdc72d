"""The edge's requests per client for Prometheus, counted from nginx's access log.

nginx without Plus has no per-request metrics; its access log names each request's client (from
its key, `infra/nginx/edge.conf`) and status. This exporter reads the lines appended since the
last scrape and serves `conveyor_edge_requests_total{client, code}`: a client's traffic, its
429s (over its rate) and 401s (no or a revoked key: client="anonymous") on a dashboard. A sidecar
sharing the log directory in compose; a process of `make stack` on loopback.

    python -m infra.edge_metrics --log DIR/access.log --host 127.0.0.1 --port 9103
"""

from __future__ import annotations

import argparse
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from infra.mlflow_metrics import serve_registry

LINE = re.compile(r" client=(?P<client>\S*) status=(?P<code>\d{3}) ")
ANONYMOUS = "anonymous"  # no key, or one the edge does not know


def count(lines: Iterator[str] | list[str]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for line in lines:
        match = LINE.search(line)
        if match:
            counts[(match["client"] or ANONYMOUS, match["code"])] += 1
    return counts


class AccessLog(Collector):
    """Counts kept across scrapes; the log is read from where the last scrape stopped (from the
    start again when it was rotated, i.e. is shorter than that)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def _read(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self.offset:
            self.offset = 0
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read(size - self.offset)
        complete = data.rfind(b"\n") + 1  # a line nginx is still writing waits for the next
        self.offset += complete
        self.counts += count(data[:complete].decode(errors="replace").splitlines())

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self.lock:
            self._read()
            family = CounterMetricFamily(
                "conveyor_edge_requests",
                "Requests the edge answered, by client (the name of its key) and status code.",
                labels=["client", "code"],
            )
            for (client, code), n in sorted(self.counts.items()):
                family.add_metric([client, code], n)
        yield family


def serve(path: Path, host: str, port: int) -> None:
    registry = CollectorRegistry()
    registry.register(AccessLog(path))
    serve_registry(registry, host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="the edge's access.log")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9103)
    args = parser.parse_args()
    serve(args.log, args.host, args.port)


if __name__ == "__main__":
    main()

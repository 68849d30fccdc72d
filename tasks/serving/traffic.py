"""Client traffic against a served model: bounded load checks and a background load that watches
which version answers. Used by the smoke test, the tuning sweep and the swap probe."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pydantic import BaseModel
from tritonclient.utils import InferenceServerException

from tasks.serving import triton_client
from tasks.serving.triton_server import Endpoint

WARMUP_REQUESTS = 20
# While waiting for a version, a run of failed requests makes the wait ask this often whether
# the server is still up (a dead one would otherwise hold the swap for its whole timeout).
LIVENESS_CHECK_S = 1.0
# A background client's request that takes longer counts as failed. Requests take milliseconds,
# a load holds them for 2 s at most; a killed server's python stubs keep its connections open,
# so without a bound a request sent just before the kill would hang until they die.
REQUEST_TIMEOUT_S = 5.0


class LoadResult(BaseModel):
    """Concurrent batch-1 HTTP clients against one model."""

    concurrency: int
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float


def summarise(latencies_ms: list[float], errors: int, clients: int, seconds: float) -> LoadResult:
    timings = np.asarray(latencies_ms, dtype=float)
    p50, p99 = (float(v) for v in np.percentile(timings, [50, 99])) if len(timings) else (0.0, 0.0)
    return LoadResult(
        concurrency=clients,
        requests=len(timings) + errors,
        errors=errors,
        throughput_rps=len(timings) / seconds if seconds > 0 else 0.0,
        p50_ms=p50,
        p99_ms=p99,
    )


def measure(
    endpoint: Endpoint, model: str, rows: np.ndarray, version: str, clients: int, requests: int
) -> LoadResult:
    """`clients` clients, each with its own connection, warm up, start together and send batch-1
    requests until `requests` are done. Bounded in count; errors are counted, not raised."""
    per_client = max(1, requests // clients)
    start_line = threading.Barrier(clients)

    def client_loop(index: int) -> tuple[list[float], int]:
        # Closed by the thread that opened it: tritonclient's HTTP client left to the garbage
        # collector closes its gevent pool from whatever thread collects it, which fails (and
        # prints a traceback into the command's output) in a thread without a gevent hub.
        with contextlib.closing(triton_client.http_client(endpoint)) as client:
            for n in range(WARMUP_REQUESTS):
                triton_client.infer_http_result(
                    client, model, rows[n % len(rows)].reshape(1, -1), version
                )
            timings, errors = [], 0
            start_line.wait()
            for n in range(per_client):
                row = rows[(index * per_client + n) % len(rows)].reshape(1, -1)
                began = time.perf_counter()
                try:
                    triton_client.infer_http_result(client, model, row, version)
                except InferenceServerException:
                    errors += 1
                    continue
                timings.append((time.perf_counter() - began) * 1000.0)
            return timings, errors

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = list(pool.map(client_loop, range(clients)))
    elapsed = time.perf_counter() - began
    return summarise(
        [t for ts, _ in outcomes for t in ts], sum(e for _, e in outcomes), clients, elapsed
    )


def answer_score(
    result: httpclient.InferResult | grpcclient.InferResult, names: list[str]
) -> float:
    """One row's answer as one number: the last value of its first output that is not the class
    index (a binary classifier's positive probability, a multi-class one's last class, a
    regressor's prediction)."""
    chosen = next((n for n in names if n != triton_client.LABEL), names[0])
    return float(np.asarray(result.as_numpy(chosen)).ravel()[-1])


class Sample(BaseModel):
    """One request of a background load: when it was sent, how long it took, who answered."""

    sent: float  # time.monotonic()
    at: float  # wall clock (time.time()) of sending, to line requests up with logged events
    latency_ms: float
    version: int | None  # None: the request failed
    error: str = ""
    # The answer as one number (`answer_score`), to compare versions' predictions on one traffic.
    score: float | None = None


class Traffic:
    """Clients that keep sending unversioned batch-1 requests, like production callers, until
    stopped. Half speak HTTP and half gRPC (all HTTP with `http_only`: the edge splits canary
    traffic by URL, which gRPC does not have); every answer records the version that served it."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        rows: np.ndarray,
        clients: int,
        http_only: bool = False,
        rate_per_s: float | None = None,
    ) -> None:
        self.endpoint, self.model, self.rows, self.clients = endpoint, model, rows, clients
        self.http_only = http_only
        # Each client's least time between two requests it sends: `rate_per_s` shared by all.
        self._interval_s = clients / rate_per_s if rate_per_s else 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)
        ]

    def _loop(self, index: int) -> None:
        # Closed by this thread (see `measure`).
        with contextlib.closing(
            triton_client.http_client(self.endpoint, timeout_s=REQUEST_TIMEOUT_S)
        ) as http:
            self._requests(http, triton_client.grpc_client(self.endpoint), index)

    def _requests(
        self,
        http: httpclient.InferenceServerClient,
        grpc: grpcclient.InferenceServerClient,
        index: int,
    ) -> None:
        n, due = 0, time.monotonic()
        while not self._stop.is_set():
            row = self.rows[(index + n * self.clients) % len(self.rows)].reshape(1, -1)
            n += 1
            if self._interval_s:
                # Paced, not closed-loop: through a rate-limited edge a probe that sends as fast
                # as answers come is refused (429) as an abusive caller would be.
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                due = max(due, time.monotonic()) + self._interval_s  # late: no catch-up burst
            sent, at = time.monotonic(), time.time()
            score: float | None = None
            try:
                version: int | None
                version, score = self._infer(http, grpc, index, row)
                error = ""
            except Exception as exc:  # every failure a production caller would see is counted
                message = exc.message() if isinstance(exc, InferenceServerException) else None
                version, error = None, message or f"{type(exc).__name__}: {exc}"
            sample = Sample(
                sent=sent,
                at=at,
                latency_ms=(time.monotonic() - sent) * 1000.0,
                version=version,
                error=error,
                score=score,
            )
            with self._lock:
                self._samples.append(sample)

    def _infer(
        self,
        http: httpclient.InferenceServerClient,
        grpc: grpcclient.InferenceServerClient,
        index: int,
        row: np.ndarray,
    ) -> tuple[int, float]:
        """The version that answered and its answer: half the clients ask over gRPC, half over
        HTTP (unless `http_only`)."""
        if index % 2 and not self.http_only:
            answer = triton_client.infer_grpc_result(
                grpc, self.model, row, timeout_s=REQUEST_TIMEOUT_S
            )
            response = answer.get_response()
            names = [o.name for o in response.outputs]
            return int(response.model_version), answer_score(answer, names)
        result = triton_client.infer_http_result(http, self.model, row)
        names = [o["name"] for o in result.get_response()["outputs"]]
        return int(result.get_response()["model_version"]), answer_score(result, names)

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def wait_for(self, requests: int, timeout_s: float = 60.0) -> None:
        """Block until at least `requests` answers (or errors) have been recorded."""
        deadline = time.monotonic() + timeout_s
        while len(self.samples()) < requests:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{requests} requests not done within {timeout_s:.0f} s")
            time.sleep(0.05)

    def wait_for_version(self, version: int, since: float, timeout_s: float = 30.0) -> float:
        """Block until `version` answers a request sent after `since`; return when it was sent.
        Raises ConnectionError as soon as the server is found dead, rather than at the timeout:
        a component failed under the release (not a gate), so the release withdraws the version
        and says what is served."""
        deadline = time.monotonic() + timeout_s
        next_check = time.monotonic() + LIVENESS_CHECK_S
        while True:
            recent = [s for s in self.samples() if s.sent >= since]
            served = [s.sent for s in recent if s.version == version]
            if served:
                return min(served)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + LIVENESS_CHECK_S
                if recent and recent[-1].version is None and not self._server_live():
                    raise ConnectionError(
                        f"Triton at {self.endpoint.http} stopped answering while {self.model} "
                        f"v{version} was swapped in ({recent[-1].error}): the server died or "
                        "restarted. `conveyor doctor` shows what it serves now."
                    )
            if now > deadline:
                raise TimeoutError(
                    f"version {version} answered no request within {timeout_s:.0f} s"
                )
            time.sleep(0.02)

    def _server_live(self) -> bool:
        # A short timeout: a server that hangs is as good as dead to the callers this protects.
        client = triton_client.http_client(self.endpoint, timeout_s=2.0)
        try:
            return bool(client.is_server_live())
        except Exception:  # refused, reset or timed out: not live, whatever the client raised
            return False
        finally:
            client.close()

    def window(self, start: float, end: float) -> LoadResult:
        """The requests sent in [start, end)."""
        chosen = [s for s in self.samples() if start <= s.sent < end]
        return summarise(
            [s.latency_ms for s in chosen if s.version is not None],
            sum(1 for s in chosen if s.version is None),
            self.clients,
            end - start,
        )

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

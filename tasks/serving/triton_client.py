"""Talking to a Triton server: the keyed control API (load, unload, index, config), loading
versions and candidates, and the inference client (HTTP and gRPC).

The embedded server's process is `tasks.serving.triton_server`."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent.ssl
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as mc_index
from tritonclient.utils import InferenceServerException

from tasks.core import credentials
from tasks.core.errors import ConveyorError, ServiceUnavailableError
from tasks.core.model_task import INPUT, LABEL, PROBABILITIES
from tasks.core.names import candidate_name
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, ServingSpec
from tasks.serving import triton_ports
from tasks.serving.model_config import config_json, render_config
from tasks.serving.triton_ports import Endpoint


class TritonError(ConveyorError):
    """Triton refused or failed an operation."""


class TritonUnreachableError(TritonError, ServiceUnavailableError):
    """Triton died or closed the connection mid-call."""


class _EdgeKey(InferenceServerClientPlugin):
    """Adds conveyor's client key to every request a client sends the edge."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def __call__(self, request: object) -> None:
        request.headers.update(self.headers)  # type: ignore[attr-defined]


def http_client(
    endpoint: Endpoint, concurrency: int = 1, timeout_s: float = 60.0
) -> httpclient.InferenceServerClient:
    """`timeout_s` bounds connecting and each request (tritonclient's default is 60 s)."""
    tls = endpoint.tls_ca_file
    client = httpclient.InferenceServerClient(
        endpoint.http,
        concurrency=concurrency,
        connection_timeout=timeout_s,
        network_timeout=timeout_s,
        ssl=tls is not None,
        # Checked against the edge's CA file, host name included (tritonclient's own default
        # context would check nothing).
        ssl_options={"ca_certs": tls} if tls else None,
        ssl_context_factory=gevent.ssl.create_default_context if tls else None,
    )
    if endpoint.via_edge:
        client.register_plugin(_EdgeKey(credentials.edge_headers()))
    return client


def grpc_client(endpoint: Endpoint) -> grpcclient.InferenceServerClient:
    tls = endpoint.tls_ca_file
    client = triton_ports.grpc_client(endpoint.grpc, root_certificates=tls)
    if endpoint.via_edge:
        client.register_plugin(_EdgeKey(credentials.edge_headers()))
    return client


# gRPC codes for a server that died or closed the connection mid-call (tritonclient passes the
# code through as `status()`): said as such rather than as a failed operation.
CONNECTION_LOST = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"})


class ControlClient:
    """Triton's model-control API (load, unload, repository index, model config) with conveyor's
    key on every call; Triton refuses these to anyone without it (`tasks.core.credentials`).

    It goes over gRPC: Triton's HTTP frontend answers a load request on an event-loop thread it
    shares with inference connections and holds them for the whole load (1.5 to 2 s measured
    here); its gRPC frontend does not."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._client = grpc_client(endpoint)
        self._headers = credentials.triton_grpc_headers(endpoint.key_file)

    def _refused(self, exc: InferenceServerException, operation: str) -> Exception:
        if "restricted" in (exc.message() or "").lower():
            return credentials.triton_refused(self.endpoint.grpc, operation)
        if exc.status() in CONNECTION_LOST:
            return TritonUnreachableError(
                f"Triton at {self.endpoint.grpc} stopped answering during `{operation}` "
                f"({exc.message()}): the server died, restarted or is not running. "
                "`conveyor doctor` shows what it serves now; `conveyor triton up` starts the "
                "embedded one."
            )
        return TritonError(f"Triton could not {operation}: {exc.message()}")

    def load(
        self,
        name: str,
        config: str | None,
        files: dict[str, bytes] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Load `name` (`config` None: as the repository's config.pbtxt says); Triton answers
        once the load has finished or failed. A python-backend stub that never starts holds the
        call open indefinitely: `timeout_s` bounds it."""
        try:
            self._client.load_model(
                name, headers=self._headers, config=config, files=files, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            if exc.status() == "StatusCode.DEADLINE_EXCEEDED":
                raise TritonError(
                    f"Triton did not finish loading {name} within {timeout_s:.0f} s; its server "
                    "log says why (for the embedded one: `conveyor triton status` names it)"
                ) from exc
            raise self._refused(exc, f"load {name}") from exc

    def unload(self, name: str) -> None:
        try:
            self._client.unload_model(name, headers=self._headers)
        except InferenceServerException as exc:
            raise self._refused(exc, f"unload {name}") from exc

    def index(self) -> list[mc_index.RepositoryIndexResponse.ModelIndex]:
        try:
            response = self._client.get_model_repository_index(headers=self._headers)
        except InferenceServerException as exc:
            raise self._refused(exc, "list its model repository") from exc
        return list(response.models)

    def config(self, name: str) -> dict[str, object]:
        try:
            response = self._client.get_model_config(name, headers=self._headers, as_json=True)
        except InferenceServerException as exc:
            raise self._refused(exc, f"show the config of {name}") from exc
        config: dict[str, object] = response["config"]
        return config

    def ready_models(self) -> list[tuple[str, str]]:
        """Every (name, version) READY on the server, candidates included: they are loaded from
        files sent in the request, so the repository index omits them, while the statistics
        API lists every loaded model."""
        try:
            stats = self._client.get_inference_statistics("", headers=self._headers, as_json=True)
        except InferenceServerException as exc:
            raise self._refused(exc, "list its loaded models") from exc
        found = {(str(m["name"]), str(m["version"])) for m in stats.get("model_stats", [])}
        found |= {(m.name, m.version) for m in self.index() if m.state == "READY"}
        return sorted(found)

    def request_counts(self, name: str) -> tuple[int, int]:
        """(succeeded, failed) inference requests `name` has answered since it was loaded, all
        versions together: Triton's own count, whoever sent them. (0, 0) when it is not loaded."""
        try:
            stats = self._client.get_inference_statistics(name, headers=self._headers, as_json=True)
        except InferenceServerException as exc:
            if "unknown model" in (exc.message() or "") or "not found" in (exc.message() or ""):
                return 0, 0
            raise self._refused(exc, f"read the statistics of {name}") from exc
        succeeded = failed = 0
        for model in stats.get("model_stats", []):
            inference = model.get("inference_stats", {})
            succeeded += int(inference.get("success", {}).get("count", 0))
            failed += int(inference.get("fail", {}).get("count", 0))
        return succeeded, failed

    def is_ready(self, name: str, version: str = "") -> bool:
        # Health is open to callers: no key needed, none sent.
        return bool(self._client.is_model_ready(name, version))


def control_client(endpoint: Endpoint) -> ControlClient:
    return ControlClient(endpoint)


def _load(
    endpoint: Endpoint,
    name: str,
    config: mc.ModelConfig,
    timeout_s: float,
    files: dict[str, bytes] | None = None,
) -> None:
    """Ask Triton to load `name` with `config` (and `files`, which override the repository's)."""
    control_client(endpoint).load(name, config_json(config), files, timeout_s)


def _wait(condition: Callable[[], bool], timeout_s: float, problem: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TritonError(problem())
        time.sleep(0.1)


def load_versions(
    endpoint: Endpoint,
    spec: ModelSpec,
    backend: str,
    versions: list[int],
    timeout_s: float,
    serving: ServingSpec | None = None,
) -> mc.ModelConfig:
    """Make exactly `versions` of the model loaded (explicit model control); return the config.

    The config override pins the version policy, so loading version N never unloads a version the
    caller still wants (previous stays loaded for an instant rollback).
    """
    rendered = render_config(spec, backend, versions, serving)
    _load(endpoint, spec.name, rendered, timeout_s)
    _wait(
        lambda: loaded_versions(endpoint, spec.name) == sorted(versions),
        timeout_s,
        lambda: (
            f"{spec.name}: Triton has versions {loaded_versions(endpoint, spec.name)} ready, "
            f"not {sorted(versions)}, {timeout_s:.0f} s after loading; see the server log"
        ),
    )
    return rendered


def load_candidate(
    settings: Settings,
    endpoint: Endpoint,
    spec: ModelSpec,
    version: int,
    files: dict[str, bytes],
    serving: ServingSpec | None = None,
    name: str | None = None,
) -> str:
    """Serve verified `files` as `name` (default `<model>-candidate-v<version>`) version
    `version`; return that name.

    The files travel in the load request, so the candidate needs no second copy in the repository
    and leaves nothing behind there when it is unloaded."""
    name = name or candidate_name(spec.name, version)
    config = render_config(spec, settings.triton_backend, [version], serving, name=name)
    timeout_s, client = settings.triton_load_timeout_s, control_client(endpoint)
    request_files = {f"file:{version}/{n}": data for n, data in files.items()}
    _load(endpoint, name, config, timeout_s, request_files)
    # Models loaded from files in the request are not in the repository index: ask the model.
    _wait(
        lambda: client.is_ready(name, str(version)),
        timeout_s,
        lambda: f"{name} v{version} not ready {timeout_s:.0f} s after loading; see the server log",
    )
    return name


def unload_model(endpoint: Endpoint, name: str, timeout_s: float = 60.0) -> None:
    """Unload every version of `name` and wait until none is READY; nothing loaded, nothing done."""
    client = control_client(endpoint)
    if not client.is_ready(name):
        return
    client.unload(name)
    _wait(
        lambda: not client.is_ready(name),
        timeout_s,
        lambda: f"{name} still has READY versions {timeout_s:.0f} s after unload",
    )


def loaded_versions(endpoint: Endpoint, name: str) -> list[int]:
    """Versions of `name` that are READY, from the model's metadata. Triton answers that from
    memory; its repository index polls the repository, which fails while S3 is unreachable,
    just when a release's clean-up must see what is still served."""
    try:
        metadata = grpc_client(endpoint).get_model_metadata(name)
    except InferenceServerException as exc:
        if "unknown model" in (exc.message() or ""):  # never loaded, or no version left
            return []
        if exc.status() in CONNECTION_LOST:
            raise TritonUnreachableError(
                f"Triton at {endpoint.grpc} is not answering ({exc.message()}): "
                "`conveyor triton up` starts the embedded one."
            ) from exc
        raise TritonError(f"Triton could not describe {name}: {exc.message()}") from exc
    return sorted(int(version) for version in metadata.versions)


# No outputs named in a request: Triton answers every output of the model (binary-encoded over
# HTTP), so one client serves a classifier (`label`, `probabilities`) and a regressor
# (`prediction`) alike.


def infer_http_result(
    client: httpclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> httpclient.InferResult:
    inp = httpclient.InferInput(INPUT, list(features.shape), "FP32")
    inp.set_data_from_numpy(features, binary_data=True)
    return client.infer(name, [inp], model_version=version)


def infer_grpc_result(
    client: grpcclient.InferenceServerClient,
    name: str,
    features: np.ndarray,
    version: str = "",
    timeout_s: float | None = None,
) -> grpcclient.InferResult:
    inp = grpcclient.InferInput(INPUT, list(features.shape), "FP32")
    inp.set_data_from_numpy(features)
    return client.infer(name, [inp], model_version=version, client_timeout=timeout_s)


def outputs_http(
    client: httpclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> dict[str, np.ndarray]:
    """Every output of one HTTP inference, by name."""
    result = infer_http_result(client, name, features, version)
    names = [output["name"] for output in result.get_response()["outputs"]]
    return {n: result.as_numpy(n) for n in names}


def outputs_grpc(
    client: grpcclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> dict[str, np.ndarray]:
    """Every output of one gRPC inference, by name."""
    result = infer_grpc_result(client, name, features, version)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def infer_http(
    client: httpclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's answer over HTTP: (labels [N], probabilities [N, classes])."""
    result = infer_http_result(client, name, features, version)
    return result.as_numpy(LABEL).reshape(-1), result.as_numpy(PROBABILITIES)


def infer_grpc(
    client: grpcclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's answer over gRPC: (labels [N], probabilities [N, classes])."""
    result = infer_grpc_result(client, name, features, version)
    return result.as_numpy(LABEL).reshape(-1), result.as_numpy(PROBABILITIES)

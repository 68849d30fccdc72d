"""Triton: config.pbtxt rendering, repository publishing and the inference client.

The embedded server's process control lives in `tasks/triton_server.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as mc_index
from tritonclient.utils import InferenceServerException

from tasks import credentials, registry, tracking, triton_server
from tasks.errors import ConveyorError, ServiceUnavailableError
from tasks.onnx import INPUT, LABEL, PROBABILITIES, OnnxArtifact, sha256
from tasks.settings import Settings
from tasks.spec import ModelSpec, ServingSpec
from tasks.storage import MANIFEST, Store, file_hashes, open_store, read_verified, verify_dir
from tasks.triton_server import Endpoint

Backend = Literal["python", "onnxruntime"]
# A candidate is served under its own name until promotion: unversioned requests go to the highest
# READY version of a model, so loading it beside the champion would hand it production traffic.
# The name carries the version, so two releases of one model (should the lease ever fail) never
# test, replace or unload each other's candidate.
CANDIDATE_SUFFIX = "-candidate-v"
TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "triton" / "python_model" / "model.py"


class TritonError(ConveyorError):
    """Triton refused or failed an operation."""


class TritonUnreachableError(TritonError, ServiceUnavailableError):
    """Triton died or closed the connection mid-call."""


class PublishResult(BaseModel):
    repository: str
    model: str
    version: int
    files: dict[str, str]  # name → sha256


def candidate_name(model: str, version: int) -> str:
    return f"{model}{CANDIDATE_SUFFIX}{version}"


def candidate_version(model: str, name: str) -> int | None:
    """The version a Triton model name is the candidate of, for `model`; None if it is not one."""
    prefix = f"{model}{CANDIDATE_SUFFIX}"
    tail = name.removeprefix(prefix)
    return int(tail) if name.startswith(prefix) and tail.isdigit() else None


def render_config(
    spec: ModelSpec,
    backend: Backend,
    versions: list[int] | None = None,
    serving: ServingSpec | None = None,
    name: str | None = None,
) -> mc.ModelConfig:
    """One I/O contract, two renderings: production onnxruntime platform, or python backend.

    `serving` overrides the spec's serving section (a tuned configuration); `name` serves the same
    files under another model name (the candidate)."""
    serving = serving or spec.serving
    config = mc.ModelConfig(name=name or spec.name, max_batch_size=serving.max_batch_size)
    if backend == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
    else:
        config.backend = "python"
    config.input.append(mc.ModelInput(name=INPUT, data_type=mc.TYPE_FP32, dims=[spec.n_features]))
    config.output.extend(
        [
            mc.ModelOutput(name=LABEL, data_type=mc.TYPE_INT64, dims=[1]),
            mc.ModelOutput(name=PROBABILITIES, data_type=mc.TYPE_FP32, dims=[spec.n_classes]),
        ]
    )
    config.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_microseconds
    config.dynamic_batching.preferred_batch_size.extend(serving.preferred_batch_sizes)
    kind = mc.ModelInstanceGroup.Kind.Value(serving.kind)
    config.instance_group.append(mc.ModelInstanceGroup(count=serving.instance_count, kind=kind))
    for key in ("intra_op_thread_count", "inter_op_thread_count"):
        config.parameters[key].string_value = "1"
    # Columns where NaN means "missing" (the graph imputes it); NaN elsewhere is refused.
    nullable = [str(i) for i, f in enumerate(spec.features) if f.nullable]
    config.parameters["nullable_columns"].string_value = ",".join(nullable)
    # Warm-up runs before Triton marks a version READY, so no client pays onnxruntime's first run.
    warmup_input = mc.ModelWarmup.Input(
        data_type=mc.TYPE_FP32, dims=[spec.n_features], zero_data=True
    )
    config.model_warmup.append(
        mc.ModelWarmup(name="one-row", batch_size=1, inputs={INPUT: warmup_input})
    )
    if versions:
        config.version_policy.specific.versions.extend(sorted(versions))
    return config


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def config_json(config: mc.ModelConfig) -> str:
    """The form `load_model(config=...)` takes; field names as in config.pbtxt."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def python_model_source() -> bytes:
    if not TEMPLATE.is_file():
        raise TritonError(
            f"python-backend model template missing at {TEMPLATE}; run conveyor from its source "
            "checkout (installed with `pip install -e .`, as `make` does)"
        )
    return TEMPLATE.read_bytes()


def version_files(onnx_bytes: bytes, backend: Backend) -> dict[str, bytes]:
    files = {"model.onnx": onnx_bytes}
    if backend == "python":
        files["model.py"] = python_model_source()
    return files


def publish_version(
    store: Store,
    repository: str,
    spec: ModelSpec,
    version: int,
    onnx_bytes: bytes,
    backend: Backend,
) -> PublishResult:
    """Write `<model>/<version>/` all at once with its manifest.

    The model's config.pbtxt is written when a version goes live (`go_live`), so the repository
    on disk always describes what is served."""
    files = version_files(onnx_bytes, backend)
    key = f"{spec.name}/{version}"
    if store.exists(key):
        # A retry of the same export finds its own complete version; anything else is a conflict.
        if verify_dir(store, key) != file_hashes(files):
            raise TritonError(
                f"{repository}/{key} already holds different files. Version numbers come from "
                "the MLflow registry; this repository belongs to another registry or was edited "
                "by hand. Point CONVEYOR_MODEL_REPOSITORY at this registry's repository."
            )
    else:
        store.publish_dir(key, files)
    return PublishResult(
        repository=repository, model=spec.name, version=version, files=verify_dir(store, key)
    )


def http_client(
    endpoint: Endpoint, concurrency: int = 1, timeout_s: float = 60.0
) -> httpclient.InferenceServerClient:
    """`timeout_s` bounds connecting and each request (tritonclient's default is 60 s)."""
    return httpclient.InferenceServerClient(
        endpoint.http,
        concurrency=concurrency,
        connection_timeout=timeout_s,
        network_timeout=timeout_s,
    )


def grpc_client(endpoint: Endpoint) -> grpcclient.InferenceServerClient:
    return triton_server.grpc_client(endpoint.grpc)


# gRPC codes for a server that died or closed the connection mid-call (tritonclient passes the
# code through as `status()`): said as such rather than as a failed operation.
CONNECTION_LOST = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"})


class ControlClient:
    """Triton's model-control API (load, unload, repository index, model config) with conveyor's
    key on every call; Triton refuses these to anyone without it (`tasks.credentials`).

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
        config: str,
        files: dict[str, bytes] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Load `name`; Triton answers once the load has finished or failed. A python-backend
        stub that never starts holds the call open indefinitely: `timeout_s` bounds it."""
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
    backend: Backend,
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
) -> str:
    """Serve verified `files` as `<model>-candidate-v<version>` version `version`; return that
    name.

    The files travel in the load request, so the candidate needs no second copy in the repository
    and leaves nothing behind there when it is unloaded."""
    name = candidate_name(spec.name, version)
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


def infer_http_result(
    client: httpclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> httpclient.InferResult:
    inp = httpclient.InferInput(INPUT, list(features.shape), "FP32")
    inp.set_data_from_numpy(features, binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput(LABEL, binary_data=True),
        httpclient.InferRequestedOutput(PROBABILITIES, binary_data=True),
    ]
    return client.infer(name, [inp], model_version=version, outputs=outputs)


def infer_grpc_result(
    client: grpcclient.InferenceServerClient,
    name: str,
    features: np.ndarray,
    version: str = "",
    timeout_s: float | None = None,
) -> grpcclient.InferResult:
    inp = grpcclient.InferInput(INPUT, list(features.shape), "FP32")
    inp.set_data_from_numpy(features)
    outputs = [
        grpcclient.InferRequestedOutput(LABEL),
        grpcclient.InferRequestedOutput(PROBABILITIES),
    ]
    return client.infer(
        name, [inp], model_version=version, outputs=outputs, client_timeout=timeout_s
    )


def infer_http(
    client: httpclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    result = infer_http_result(client, name, features, version)
    return result.as_numpy(LABEL).reshape(-1), result.as_numpy(PROBABILITIES)


def infer_grpc(
    client: grpcclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    result = infer_grpc_result(client, name, features, version)
    return result.as_numpy(LABEL).reshape(-1), result.as_numpy(PROBABILITIES)


class ServingState(BaseModel):
    endpoint: Endpoint
    model: str
    versions: list[int]


def publish(
    settings: Settings, spec: ModelSpec, ref: registry.ModelRef, onnx: OnnxArtifact
) -> PublishResult:
    data = tracking.read_artifact(settings, onnx.uri)
    actual = sha256(data)
    if actual != onnx.sha256:
        raise TritonError(
            f"{onnx.uri} has sha256 {actual[:12]}…, the export recorded {onnx.sha256[:12]}…; "
            "the artifact store was modified. Export again."
        )
    store = open_store(settings.repository)
    return publish_version(
        store, settings.repository, spec, ref.version, data, settings.triton_backend
    )


def serving_for(settings: Settings, spec: ModelSpec, version: int) -> ServingSpec:
    """The serving configuration a version was released with (tuned), else the spec's."""
    tagged = registry.version_tag(settings, spec.name, version, registry.TAG_SERVING)
    return ServingSpec.model_validate_json(tagged) if tagged else spec.serving


def serve_candidate(
    settings: Settings,
    spec: ModelSpec,
    ref: registry.ModelRef,
    serving: ServingSpec | None = None,
) -> ServingState:
    """Serve the candidate's verified files under its candidate name, reachable for the smoke test
    but never by production callers, who keep getting the champion until the swap."""
    files = read_verified(open_store(settings.repository), f"{spec.name}/{ref.version}")
    endpoint = triton_server.endpoint(settings)
    name = load_candidate(settings, endpoint, spec, ref.version, files, serving)
    return ServingState(endpoint=endpoint, model=name, versions=[ref.version])


def live_versions(settings: Settings, spec: ModelSpec) -> list[int]:
    """What the registry says is live (champion, and previous for instant rollback)."""
    store = open_store(settings.repository)
    live = {
        registry.alias_version(settings, spec.name, a)
        for a in (registry.PREVIOUS, registry.CHAMPION)
    }
    return sorted(v for v in live if v is not None and store.exists(f"{spec.name}/{v}/{MANIFEST}"))


class LiveSet(BaseModel):
    """What was live when a release started, kept so that its clean-up can put it back without
    the registry (which may be what failed)."""

    versions: list[int]
    serving: ServingSpec | None = None


def live_set(settings: Settings, spec: ModelSpec) -> LiveSet:
    versions = live_versions(settings, spec)
    serving = serving_for(settings, spec, max(versions)) if versions else None
    return LiveSet(versions=versions, serving=serving)


def go_live(
    settings: Settings, spec: ModelSpec, versions: list[int], serving: ServingSpec | None = None
) -> ServingState:
    """Make exactly `versions` loaded under the model's own name; the newest answers unversioned
    requests, with the serving configuration it was released with. Every file is verified first,
    and config.pbtxt is rewritten afterwards, so the repository on disk matches what is served
    (a production Triton started on it loads the same set)."""
    store = open_store(settings.repository)
    for version in versions:
        verify_dir(store, f"{spec.name}/{version}")
    endpoint = triton_server.endpoint(settings)
    if not versions:
        unload_model(endpoint, spec.name)
        return ServingState(endpoint=endpoint, model=spec.name, versions=[])
    config = load_versions(
        endpoint,
        spec,
        settings.triton_backend,
        versions,
        settings.triton_load_timeout_s,
        serving or serving_for(settings, spec, max(versions)),
    )
    store.write_file(f"{spec.name}/config.pbtxt", config_text(config).encode())
    return ServingState(endpoint=endpoint, model=spec.name, versions=sorted(versions))


def restore_serving(settings: Settings, spec: ModelSpec) -> ServingState:
    return go_live(settings, spec, live_versions(settings, spec))


class Withdrawal(BaseModel):
    state: ServingState
    files_kept: str | None = None  # why the version's files are still in the repository


def withdraw(
    settings: Settings, spec: ModelSpec, ref: registry.ModelRef, before: LiveSet | None = None
) -> Withdrawal:
    """Undo a candidate: its candidate model unloaded, Triton back to what the registry says is
    live (it may have been swapped in before a later step failed), the version's files gone.

    With the registry unreachable (`before` given): Triton goes back to what was live when the
    release started, and the files stay, since the promotion may have moved an alias onto them
    before the registry went; with the repository unreachable, they stay too.
    `conveyor doctor --repair` settles either once the server is back."""
    endpoint = triton_server.endpoint(settings)
    unload_model(endpoint, candidate_name(spec.name, ref.version))
    kept = None
    if ref.version in loaded_versions(endpoint, spec.name):
        try:
            restore_serving(settings, spec)
        except MlflowException:
            if before is None:
                raise
            go_live(settings, spec, before.versions, before.serving)
            kept = "the registry did not answer"
    if kept is None:
        try:
            open_store(settings.repository).remove_dir(f"{spec.name}/{ref.version}")
        except Exception as exc:  # S3 or the disk failed: often what failed the release
            kept = f"the repository did not answer ({type(exc).__name__})"
    state = ServingState(
        endpoint=endpoint, model=spec.name, versions=loaded_versions(endpoint, spec.name)
    )
    return Withdrawal(state=state, files_kept=kept)


def serve_only(settings: Settings, spec: ModelSpec, version: int) -> ServingState:
    """Make `version` the only loaded version (its files verified first)."""
    if not open_store(settings.repository).exists(f"{spec.name}/{version}"):
        raise TritonError(
            f"{settings.repository}/{spec.name}/{version} does not exist; it cannot be served"
        )
    return go_live(settings, spec, [version])


@task(name="publish-version")
def publish_task(
    settings: Settings, spec: ModelSpec, ref: registry.ModelRef, onnx: OnnxArtifact
) -> PublishResult:
    result = publish(settings, spec, ref, onnx)
    get_run_logger().info(
        "published %s/%s/%d (%s)",
        result.repository,
        spec.name,
        ref.version,
        ", ".join(result.files),
    )
    return result


@task(name="serve-candidate")
def serve_candidate_task(
    settings: Settings,
    spec: ModelSpec,
    ref: registry.ModelRef,
    serving: ServingSpec | None = None,
) -> ServingState:
    state = serve_candidate(settings, spec, ref, serving)
    get_run_logger().info(
        "Triton %s serves the candidate as %s v%d", state.endpoint.http, state.model, ref.version
    )
    return state


@task(name="withdraw-candidate")
def withdraw_task(
    settings: Settings, spec: ModelSpec, ref: registry.ModelRef, before: LiveSet | None = None
) -> Withdrawal:
    done = withdraw(settings, spec, ref, before)
    get_run_logger().warning(
        "withdrew %s version %d: Triton serves versions %s, its files are %s",
        spec.name,
        ref.version,
        done.state.versions,
        f"kept ({done.files_kept}) until `conveyor doctor --repair`"
        if done.files_kept
        else "removed",
    )
    return done


@task(name="serve-only")
def serve_only_task(settings: Settings, spec: ModelSpec, version: int) -> ServingState:
    state = serve_only(settings, spec, version)
    get_run_logger().info("Triton %s serves %s v%d only", state.endpoint.http, spec.name, version)
    return state


@task(name="restore-serving")
def restore_serving_task(settings: Settings, spec: ModelSpec) -> ServingState:
    state = restore_serving(settings, spec)
    get_run_logger().warning(
        "Triton %s serves %s versions %s again, as the registry's aliases say",
        state.endpoint.http,
        spec.name,
        state.versions,
    )
    return state

"""Triton: config.pbtxt rendering, repository publishing and the inference client.

The embedded server's process control lives in `tasks/triton_server.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from prefect import get_run_logger, task
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tasks import registry, triton_server
from tasks.onnx import INPUT, LABEL, PROBABILITIES, OnnxArtifact, sha256
from tasks.settings import ConveyorError, ModelSpec, Settings
from tasks.storage import Store, file_hashes, open_store, verify_dir
from tasks.triton_server import Endpoint

Backend = Literal["python", "onnxruntime"]
TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "triton" / "python_model" / "model.py"


class TritonError(ConveyorError):
    """Triton refused or failed an operation."""


class PublishResult(BaseModel):
    repository: str
    model: str
    version: int
    files: dict[str, str]  # name → sha256
    config_pbtxt: str


def render_config(
    spec: ModelSpec, backend: Backend, versions: list[int] | None = None
) -> mc.ModelConfig:
    """One I/O contract, two renderings: production onnxruntime platform, or python backend."""
    serving = spec.serving
    config = mc.ModelConfig(name=spec.name, max_batch_size=serving.max_batch_size)
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
    """Write `<model>/<version>/` all at once with its manifest, then the model's config.pbtxt."""
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
    text = config_text(render_config(spec, backend))
    store.write_file(f"{spec.name}/config.pbtxt", text.encode())
    return PublishResult(
        repository=repository,
        model=spec.name,
        version=version,
        files=verify_dir(store, key),
        config_pbtxt=text,
    )


def http_client(endpoint: Endpoint, concurrency: int = 1) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(endpoint.http, concurrency=concurrency)


def grpc_client(endpoint: Endpoint) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(endpoint.grpc)


def load_versions(
    endpoint: Endpoint, spec: ModelSpec, backend: Backend, versions: list[int], timeout_s: float
) -> None:
    """Make exactly `versions` of the model loaded (explicit model control).

    The config override pins the version policy, so loading version N never unloads a version the
    caller still wants (the champion keeps serving while a challenger is smoke-tested).
    """
    client = http_client(endpoint)
    config = config_json(render_config(spec, backend, versions))
    try:
        client.load_model(spec.name, config=config)
    except InferenceServerException as exc:
        raise TritonError(
            f"Triton could not load {spec.name} versions {versions}: {exc.message()}"
        ) from exc
    deadline = time.monotonic() + timeout_s
    while (ready := loaded_versions(endpoint, spec.name)) != sorted(versions):
        if time.monotonic() > deadline:
            raise TritonError(
                f"{spec.name}: Triton has versions {ready} ready, not {sorted(versions)}, "
                f"{timeout_s:.0f} s after loading; see the server log"
            )
        time.sleep(0.1)


def unload_model(endpoint: Endpoint, name: str, timeout_s: float = 60.0) -> None:
    """Unload every version of `name` and wait until none is READY."""
    try:
        http_client(endpoint).unload_model(name)
    except InferenceServerException as exc:
        raise TritonError(f"Triton could not unload {name}: {exc.message()}") from exc
    deadline = time.monotonic() + timeout_s
    while loaded_versions(endpoint, name):
        if time.monotonic() > deadline:
            raise TritonError(f"{name} still has READY versions {timeout_s:.0f} s after unload")
        time.sleep(0.1)


def loaded_versions(endpoint: Endpoint, name: str) -> list[int]:
    """Versions of `name` that are READY, from the repository index."""
    index = http_client(endpoint).get_model_repository_index()
    return sorted(
        int(entry["version"])
        for entry in index
        if entry.get("name") == name and entry.get("state") == "READY" and entry.get("version")
    )


def infer_http(
    client: httpclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    inp = httpclient.InferInput(INPUT, list(features.shape), "FP32")
    inp.set_data_from_numpy(features, binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput(LABEL, binary_data=True),
        httpclient.InferRequestedOutput(PROBABILITIES, binary_data=True),
    ]
    result = client.infer(name, [inp], model_version=version, outputs=outputs)
    return result.as_numpy(LABEL).reshape(-1), result.as_numpy(PROBABILITIES)


def infer_grpc(
    client: grpcclient.InferenceServerClient, name: str, features: np.ndarray, version: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    inp = grpcclient.InferInput(INPUT, list(features.shape), "FP32")
    inp.set_data_from_numpy(features)
    outputs = [
        grpcclient.InferRequestedOutput(LABEL),
        grpcclient.InferRequestedOutput(PROBABILITIES),
    ]
    result = client.infer(name, [inp], model_version=version, outputs=outputs)
    return result.as_numpy(LABEL).reshape(-1), result.as_numpy(PROBABILITIES)


class ServingState(BaseModel):
    endpoint: Endpoint
    model: str
    versions: list[int]


def publish(
    settings: Settings, spec: ModelSpec, ref: registry.ModelRef, onnx: OnnxArtifact
) -> PublishResult:
    data = registry.read_artifact(settings, onnx.uri)
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


def _verified(store: Store, spec: ModelSpec, version: int | None) -> bool:
    if version is None or not store.exists(f"{spec.name}/{version}"):
        return False
    verify_dir(store, f"{spec.name}/{version}")
    return True


def serve_candidate(settings: Settings, spec: ModelSpec, ref: registry.ModelRef) -> ServingState:
    """Load the candidate beside the champion: the champion keeps serving unversioned requests
    until promotion, and the candidate is reachable by its version for the smoke test."""
    store = open_store(settings.repository)
    verify_dir(store, f"{spec.name}/{ref.version}")
    champion = registry.alias_version(settings, spec.name, registry.CHAMPION)
    versions = [ref.version]
    if champion is not None and champion != ref.version and _verified(store, spec, champion):
        versions.insert(0, champion)
    endpoint = triton_server.endpoint(settings)
    load_versions(endpoint, spec, settings.triton_backend, versions, settings.triton_load_timeout_s)
    return ServingState(endpoint=endpoint, model=spec.name, versions=sorted(versions))


def withdraw(settings: Settings, spec: ModelSpec, ref: registry.ModelRef) -> ServingState:
    """Undo a candidate: Triton back to what the registry says is live, the version's files gone."""
    endpoint = triton_server.endpoint(settings)
    served = loaded_versions(endpoint, spec.name)
    # restore_serving's version policy unloads the candidate; with nothing live, unload it all.
    if ref.version in served and not restore_serving(settings, spec).versions:
        unload_model(endpoint, spec.name)
    open_store(settings.repository).remove_dir(f"{spec.name}/{ref.version}")
    return ServingState(
        endpoint=endpoint, model=spec.name, versions=loaded_versions(endpoint, spec.name)
    )


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
    settings: Settings, spec: ModelSpec, ref: registry.ModelRef
) -> ServingState:
    state = serve_candidate(settings, spec, ref)
    get_run_logger().info(
        "Triton %s serves %s versions %s", state.endpoint.http, spec.name, state.versions
    )
    return state


@task(name="withdraw-candidate")
def withdraw_task(settings: Settings, spec: ModelSpec, ref: registry.ModelRef) -> ServingState:
    state = withdraw(settings, spec, ref)
    get_run_logger().warning(
        "withdrew %s version %d: Triton serves versions %s, its files are removed",
        spec.name,
        ref.version,
        state.versions,
    )
    return state


def restore_serving(settings: Settings, spec: ModelSpec) -> ServingState:
    """Load what the registry says is live (champion, and previous for instant rollback)."""
    store = open_store(settings.repository)
    endpoint = triton_server.endpoint(settings)
    live = {
        registry.alias_version(settings, spec.name, a)
        for a in (registry.PREVIOUS, registry.CHAMPION)
    }
    versions = sorted(v for v in live if v is not None and _verified(store, spec, v))
    if versions:
        load_versions(
            endpoint, spec, settings.triton_backend, versions, settings.triton_load_timeout_s
        )
    return ServingState(endpoint=endpoint, model=spec.name, versions=versions)


def serve_only(settings: Settings, spec: ModelSpec, version: int) -> ServingState:
    """Make `version` the only loaded version (its files verified first)."""
    store = open_store(settings.repository)
    if not _verified(store, spec, version):
        raise TritonError(
            f"{settings.repository}/{spec.name}/{version} does not exist; it cannot be served"
        )
    endpoint = triton_server.endpoint(settings)
    load_versions(
        endpoint, spec, settings.triton_backend, [version], settings.triton_load_timeout_s
    )
    return ServingState(endpoint=endpoint, model=spec.name, versions=[version])


@task(name="serve-only")
def serve_only_task(settings: Settings, spec: ModelSpec, version: int) -> ServingState:
    state = serve_only(settings, spec, version)
    get_run_logger().info("Triton %s serves %s v%d only", state.endpoint.http, spec.name, version)
    return state

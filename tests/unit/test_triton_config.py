import json
import socket

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tasks.core.errors import ServiceUnavailableError
from tasks.core.names import candidate_name, candidate_version
from tasks.core.renderings import RENDERINGS
from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.serving.model_config import (
    config_json,
    config_text,
    parse_config,
    render_config,
)
from tasks.serving.triton_client import ControlClient, TritonError, loaded_versions
from tasks.serving.triton_server import Endpoint


@pytest.mark.parametrize("backend", list(RENDERINGS))
def test_every_rendering_carries_one_contract(backend: str) -> None:
    spec = load_spec(DEFAULT_SPEC)
    config = parse_config(config_text(render_config(spec, backend)))  # type: ignore[arg-type]
    assert config.name == spec.name
    assert config.max_batch_size == spec.serving.max_batch_size > 0
    [features] = config.input
    assert (features.name, features.data_type, list(features.dims)) == (
        "features",
        mc.TYPE_FP32,
        [spec.n_features],
    )
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert outputs == {"label": (mc.TYPE_INT64, [1]), "probabilities": (mc.TYPE_FP32, [2])}
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_renderings_differ_only_in_how_the_model_runs() -> None:
    spec = load_spec(DEFAULT_SPEC)
    production = render_config(spec, "onnxruntime")
    embedded = render_config(spec, "python")
    assert production.platform == "onnxruntime_onnx"
    assert production.default_model_filename == "model.onnx"
    assert embedded.backend == "python"
    assert not embedded.platform
    configs = [render_config(spec, name) for name in RENDERINGS]
    for config in configs:
        assert config.platform or config.backend, "a rendering that says nothing of what runs"
        config.ClearField("platform")
        config.ClearField("backend")
        config.ClearField("default_model_filename")
    assert all(config == configs[0] for config in configs)


@pytest.mark.parametrize("backend", list(RENDERINGS))
def test_every_renderings_version_holds_the_onnx_file_as_it_was(backend: str) -> None:
    files = RENDERINGS[backend].files(b"onnx bytes")
    assert files["model.onnx"] == b"onnx bytes"
    assert all(isinstance(data, bytes) and data for data in files.values())


def test_an_unknown_rendering_is_refused_naming_those_there_are(monkeypatch) -> None:
    from pydantic import ValidationError

    from tasks.core.settings import Settings

    monkeypatch.setenv("CONVEYOR_TRITON_BACKEND", "tensorrt")
    with pytest.raises(ValidationError, match="one of \\['onnxruntime', 'python'\\]"):
        Settings()


def test_gpu_instances_and_version_pinning_render() -> None:
    spec = load_spec(DEFAULT_SPEC)
    spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"kind": "KIND_GPU"})})
    config = render_config(spec, "onnxruntime", versions=[3, 2])
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(config.version_policy.specific.versions) == [2, 3]
    assert json.loads(config_json(config))["version_policy"] == {
        "specific": {"versions": ["2", "3"]}
    }  # proto3 JSON: int64 as string


def test_every_version_is_warmed_up_before_it_is_ready() -> None:
    spec = load_spec(DEFAULT_SPEC)
    [warmup] = render_config(spec, "python").model_warmup
    assert warmup.batch_size == 1
    sample = warmup.inputs["features"]
    assert (sample.data_type, list(sample.dims), sample.zero_data) == (
        mc.TYPE_FP32,
        [spec.n_features],
        True,
    )


def test_tuned_serving_and_candidate_name_override_the_spec() -> None:
    spec = load_spec(DEFAULT_SPEC)
    tuned = spec.serving.model_copy(update={"max_queue_delay_microseconds": 0, "instance_count": 2})
    config = render_config(spec, "python", [4], tuned, name=candidate_name(spec.name, 4))
    assert config.name == "fraud-detector.candidate-v4"
    assert candidate_version(spec.name, config.name) == 4
    assert candidate_version(spec.name, spec.name) is None
    assert candidate_version(spec.name, "fraud-detector.candidate-vx") is None
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.instance_group[0].count == 2


def test_a_control_call_to_a_server_that_is_gone_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TRITON_ADMIN_KEY", "k" * 32)
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ControlClient(Endpoint(http=f"127.0.0.1:{port}", grpc=f"127.0.0.1:{port}"))
    with pytest.raises(TritonError, match="stopped answering during `unload m`") as caught:
        client.unload("m")
    assert "conveyor doctor" in str(caught.value)
    # No verdict on a model: a release that meets it is withdrawn and says what is served.
    assert isinstance(caught.value, ServiceUnavailableError)
    with pytest.raises(ServiceUnavailableError, match="is not answering"):
        loaded_versions(client.endpoint, "m")

"""Triton model configuration: config.pbtxt rendered from a spec (one contract, each rendering of
`tasks.core.renderings` saying how Triton runs it), parsed back, and the candidate's own
Triton name."""

from __future__ import annotations

import json

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from tasks.core.model_task import INPUT, LABEL, PREDICTION, PROBABILITIES, outputs
from tasks.core.renderings import rendering_of
from tasks.core.spec import ModelSpec, ServingSpec


def render_config(
    spec: ModelSpec,
    backend: str,
    versions: list[int] | None = None,
    serving: ServingSpec | None = None,
    name: str | None = None,
) -> mc.ModelConfig:
    """One I/O contract, rendered for `backend` (a name in `tasks.core.renderings`).

    `serving` overrides the spec's serving section (a tuned configuration); `name` serves the same
    files under another model name (the candidate)."""
    serving = serving or spec.serving
    config = mc.ModelConfig(name=name or spec.name, max_batch_size=serving.max_batch_size)
    rendering_of(backend).configure(config)
    config.input.append(mc.ModelInput(name=INPUT, data_type=mc.TYPE_FP32, dims=[spec.n_features]))
    config.output.extend(served_outputs(spec))
    if spec.class_names:
        # `label` is an index into these: a client maps it (and each probability's position)
        # to the class without reading the spec. JSON, since class names may hold commas.
        config.parameters["class_names"].string_value = json.dumps(spec.class_names)
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


def served_outputs(spec: ModelSpec) -> list[mc.ModelOutput]:
    """The task's output tensors: a classifier's `label` INT64 [1] and `probabilities` FP32
    [classes], a regressor's `prediction` FP32 [1]."""
    shapes = {
        LABEL: (mc.TYPE_INT64, [1]),
        PROBABILITIES: (mc.TYPE_FP32, [spec.n_classes]),
        PREDICTION: (mc.TYPE_FP32, [1]),
    }
    return [
        mc.ModelOutput(name=name, data_type=shapes[name][0], dims=shapes[name][1])
        for name in outputs(spec.task)
    ]


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def config_json(config: mc.ModelConfig) -> str:
    """The form `load_model(config=...)` takes; field names as in config.pbtxt."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())

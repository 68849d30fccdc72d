"""Production: Triton's own onnxruntime backend runs the ONNX file (NGC images, `make stack`'s
compose). No conveyor code runs inside Triton; the graph itself clips and checks its inputs
(`tasks.modeling.onnx`)."""

from __future__ import annotations

from typing import Any

from tasks.core.renderings.rendering import Rendering


def configure(config: Any) -> None:
    config.platform = "onnxruntime_onnx"
    config.default_model_filename = "model.onnx"


def files(onnx_bytes: bytes) -> dict[str, bytes]:
    return {"model.onnx": onnx_bytes}


RENDERING = Rendering(
    name="onnxruntime",
    summary="production Triton: the onnxruntime_onnx platform runs the ONNX file itself",
    configure=configure,
    files=files,
)

"""The embedded default: Triton's python backend runs the ONNX file through onnxruntime inside
conveyor's stub (`infra/triton/python_model/model.py`), which checks each request against the
contract. The `tritonserver` in the nvidia-pytriton wheel has no onnxruntime backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.renderings.rendering import Rendering, RenderingError

TEMPLATE = Path(__file__).resolve().parents[3] / "infra" / "triton" / "python_model" / "model.py"


def stub_source() -> bytes:
    if not TEMPLATE.is_file():
        raise RenderingError(
            f"python-backend model template missing at {TEMPLATE}; run conveyor from its source "
            "checkout (installed with `pip install -e .`, as `make` does)"
        )
    return TEMPLATE.read_bytes()


def configure(config: Any) -> None:
    config.backend = "python"


def files(onnx_bytes: bytes) -> dict[str, bytes]:
    return {"model.onnx": onnx_bytes, "model.py": stub_source()}


RENDERING = Rendering(
    name="python",
    summary="the embedded build: the python backend running the ONNX file in conveyor's stub",
    configure=configure,
    files=files,
)

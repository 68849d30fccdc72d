"""How Triton runs a served version, as one table: `RENDERINGS`, by the name
`CONVEYOR_TRITON_BACKEND` takes. Every rendering serves the same I/O contract (inputs, outputs,
batching, warm-up); one says only which backend runs the model and which files a version
holds. On floor 0 because the settings validate the name. **A new rendering (TensorRT, the FIL
backend) is one module here plus one line below**; the tests iterate the table."""

from __future__ import annotations

from tasks.core.errors import ConveyorError
from tasks.core.renderings import onnxruntime_onnx, python_backend
from tasks.core.renderings.rendering import Rendering, RenderingError

RENDERINGS: dict[str, Rendering] = {
    r.name: r for r in (python_backend.RENDERING, onnxruntime_onnx.RENDERING)
}


def rendering_of(name: str) -> Rendering:
    try:
        return RENDERINGS[name]
    except KeyError:
        raise ConveyorError(
            f"no Triton rendering named {name!r}: CONVEYOR_TRITON_BACKEND is one of "
            f"{sorted(RENDERINGS)}"
        ) from None


__all__ = ["RENDERINGS", "Rendering", "RenderingError", "rendering_of"]

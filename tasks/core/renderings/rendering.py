"""What a rendering is: how Triton runs a served version of the one I/O contract (DESIGN.md). The
inputs, outputs, batching, instances and warm-up of `config.pbtxt` are the contract's and the
same for every rendering; a rendering says only which backend or platform runs the model and
which files a version holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.core.errors import ConveyorError


class RenderingError(ConveyorError):
    """A rendering cannot produce a version's files."""


@dataclass(frozen=True)
class Rendering:
    name: str  # CONVEYOR_TRITON_BACKEND's value
    summary: str  # where it is used, in a sentence
    # Sets how Triton runs the model on a `model_config_pb2.ModelConfig` (backend or platform,
    # file name); nothing else of the config.
    configure: Callable[[Any], None]
    # A version's files (name → bytes) from its ONNX file.
    files: Callable[[bytes], dict[str, bytes]]

"""The base of every error conveyor expects: its message says what went wrong and how to fix it,
and the CLI prints it as one paragraph (exit 2) instead of a traceback."""

from __future__ import annotations

from typing import ClassVar


class ConveyorError(Exception):
    """An error whose message already says what went wrong and how to fix it."""

    # The release gate this error is the verdict of (for gate metrics); None: not a gate.
    gate: ClassVar[str | None] = None


class ServiceUnavailableError(ConveyorError):
    """A server conveyor depends on stopped answering mid-operation. Expected (one paragraph, no
    traceback), but no verdict on the model: a release that meets one is withdrawn and says
    what is served after its clean-up, which may already have restarted the server."""

"""What `conveyor doctor` reports: a problem (what is wrong, what a repair does about it) and
the report of one examination."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.core.errors import ConveyorError


class Problem(BaseModel):
    model: str | None
    kind: str  # one of the kinds of `tasks.ops.doctor.CHECKS`
    detail: str
    repair: str  # what --repair does about it
    key: str | None = None  # the repository key or Triton model name it concerns
    repaired: bool = False

    def line(self) -> str:
        done = " [repaired]" if self.repaired else ""
        return f"{self.model or '(server)'}: {self.kind}: {self.detail}{done}"


class DoctorReport(BaseModel):
    models: list[str]
    problems: list[Problem]

    @property
    def clean(self) -> bool:
        # A live release is not a broken invariant; its leftovers are not judged while it runs.
        return all(p.repaired or p.kind == "release-running" for p in self.problems)


class DoctorError(ConveyorError):
    """`conveyor doctor` found problems it did not (or could not) repair."""

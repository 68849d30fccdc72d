"""mkdocs hooks: the pages that are generated so they cannot drift from the code.

`reference/spec.md` is written from the pydantic models of the spec (every section, key, type,
default and description) and from the tables of estimator families, model gates and data
sources; `reference/benchmarks.md` is BENCHMARKS.md as measured (`make bench` writes it)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
GENERATED = "<!-- generated -->"


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("|", "or").replace("NoneType", "none")


def _cell(text: str) -> str:
    """Text for a table cell: a pipe ends the cell, and `<…>` would be read as HTML."""
    return text.replace("|", "/").replace("<", "&lt;")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(section defaults)" if _model_of(field.annotation) else "[]"
    value = field.default
    return "" if value is PydanticUndefined else f"`{value!r}`"


def _section(model: type[BaseModel], where: str, depth: int) -> list[str]:
    lines = [f"{'#' * depth} `{where}`", ""]
    if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
        lines += [" ".join(model.__doc__.split()), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        described = _cell(field.description or "")
        kind = f"section `{where}.{name}`" if sub else _type(field.annotation)
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {described} |")
        if sub and sub is not model:
            nested.append((sub, f"{where}.{name}"))
    lines.append("")
    for sub, path in nested:
        lines += _section(sub, path, min(depth + 1, 4))
    return lines


def spec_reference() -> str:
    from tasks.core.families import FAMILIES
    from tasks.core.gates import MODEL_GATES
    from tasks.core.spec import ModelSpec
    from tasks.datasets.sources import SOURCES

    lines = ["## Estimator families (`estimator.family`)", ""]
    lines += ["| family | tasks | contributions | search space (`conveyor init`) |"]
    lines += ["|---|---|---|---|"]
    for name, family in FAMILIES.items():
        tasks = ", ".join(sorted(t.value for t in family.tasks))
        space = ", ".join(f"`{key}`" for key in family.search_space)
        lines.append(f"| `{name}` | {tasks} | {family.explanation} | {space} |")
    lines += ["", "## Model gates (`gates:`)", "", "| gate | judges | refuses | example |"]
    lines += ["|---|---|---|---|"]
    for name, gate in MODEL_GATES.items():
        tasks = ", ".join(sorted(t.value for t in gate.tasks))
        lines.append(f"| `{name}` | {tasks} | {_cell(gate.summary)} | `{gate.example}` |")
    lines += ["", "## Data sources (`data.source`)", "", "| source | form |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(source.form)} |" for name, source in SOURCES.items()]
    lines += ["", "## Every section", ""]
    return "\n".join(lines + _section(ModelSpec, "spec", 3))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "reference/spec.md":
        return markdown.replace(GENERATED, spec_reference())
    if page.file.src_uri == "reference/benchmarks.md":
        benchmarks = (ROOT / "BENCHMARKS.md").read_text()
        # Its title is the page's; its links to the tree point at the repository.
        body = benchmarks.split("\n", 1)[1] if benchmarks.startswith("# ") else benchmarks
        return markdown.replace(GENERATED, body)
    return markdown

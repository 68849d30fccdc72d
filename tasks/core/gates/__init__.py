"""The model gates beyond the thresholds, the champion comparison and fairness, as one table. A
gate is one module in this package (a `ModelGate`, `tasks.core.gates.gate`) plus one line in
`MODEL_GATES`: the spec's `gates:` section, the validation step, the refusal, the release's
gate metric, the validation artifact and the model card all read the table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, create_model

from tasks.core.gates import calibration
from tasks.core.gates.gate import ModelGate
from tasks.core.model_task import Task

MODEL_GATES: dict[str, ModelGate] = {gate.name: gate for gate in (calibration.GATE,)}

# The spec's `gates:` section: one optional section per gate, a gate off while its section is
# absent; a name the table does not know is refused.
GatesSpec: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "GatesSpec",
    __config__=ConfigDict(extra="forbid"),
    **{name: (gate.settings | None, None) for name, gate in MODEL_GATES.items()},
)


def set_gates(gates: BaseModel) -> dict[str, BaseModel]:
    """The table's gates a spec sets, with their sections, in the table's order."""
    return {name: section for name in MODEL_GATES if (section := getattr(gates, name)) is not None}


def gates_problem(task: Task, gates: BaseModel) -> str | None:
    """A gate set for a task it does not judge, said as what to fix."""
    for name in set_gates(gates):
        judged = MODEL_GATES[name].tasks
        if task not in judged:
            which = " and ".join(sorted(t.value for t in judged))
            return f"gates.{name} judges {which} models, not a {task.value} one: remove it"
    return None

"""What a model may be called, and the names a release serves it under: a model's own name
never equals a candidate's or a canary's, of this model or of any other (DESIGN.md: served names
never collide)."""

from __future__ import annotations

import re

# A model name is its registry entry, its Triton model, its spec file's stem, an S3 key part and
# a Prometheus label. No dot: served names that are not models (`<model>.candidate-v<N>`,
# `<model>.canary`) use one, so no model can ever be named like another model's candidate.
# 63 characters: a Kubernetes label value and a DNS label, the shortest store it lands in (MLflow
# takes 256, file names 255, S3 keys 1024); a candidate's name adds at most 22.
MAX_NAME_LENGTH = 63
MODEL_NAME = rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_NAME_LENGTH - 1}}}$"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a model name (None when it can): one sentence with the fix."""
    if len(name) > MAX_NAME_LENGTH:
        return (
            f"{name[:20]}… is {len(name)} characters; a model name has at most "
            f"{MAX_NAME_LENGTH} (it names the registry entry, the Triton model, the spec file "
            "and S3 keys): pick a shorter one"
        )
    if not re.fullmatch(MODEL_NAME, name):
        return (
            f"{name!r} is not a model name ({MODEL_NAME}): lowercase letters, digits, '-' and "
            "'_', starting with a letter or digit; no dot (dotted names are a release's "
            "candidates and canaries)"
        )
    return None


# A candidate is served under its own name until promotion: unversioned requests go to the highest
# READY version of a model, so loading it beside the champion would hand it production traffic.
# The name carries the version, so two releases of one model (should the lease ever fail) never
# test, replace or unload each other's candidate. The dot, which model names never have
# (`MODEL_NAME`), keeps it apart from every model's own name: a model called
# `wine-candidate-v2` is not wine's candidate.
CANDIDATE_SUFFIX = ".candidate-v"


def candidate_name(model: str, version: int) -> str:
    return f"{model}{CANDIDATE_SUFFIX}{version}"


# During a canary the candidate is served a second time under this stable name, which the edge
# can route to without knowing the version (`edge_routes`); a dot, which model names never have,
# keeps it apart from every model's own name.
CANARY_SUFFIX = ".canary"


def canary_name(model: str) -> str:
    return f"{model}{CANARY_SUFFIX}"


def candidate_version(model: str, name: str) -> int | None:
    """The version a Triton model name is the candidate of, for `model`; None if it is not one."""
    prefix = f"{model}{CANDIDATE_SUFFIX}"
    tail = name.removeprefix(prefix)
    return int(tail) if name.startswith(prefix) and tail.isdigit() else None

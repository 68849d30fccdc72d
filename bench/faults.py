"""A deliberately worse model, for the canary's test and benchmark: the served ONNX file behind a
python-backend model.py whose execution fails for about 40 % of rows.

The failure is decided by the row (so a warm-up sample of zeros loads, and a retry of the same
request fails alike) and raised from `execute`, which Triton counts as a failed request in its
statistics; an error *response* (what the template answers a malformed row with) is the
caller's error, not the model's, and Triton counts it as a success.
"""

from __future__ import annotations

from tasks.serving import rollout

FAILING_SUFFIX = """

_execute = TritonPythonModel.execute


def _fails(request):
    x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
    return int(np.abs(x).sum() * 7919.0) % 10 >= 6


def _failing(self, requests):
    if any(_fails(r) for r in requests):
        raise pb_utils.TritonModelException("deliberate canary fault")
    return _execute(self, requests)


TritonPythonModel.execute = _failing
"""


def failing_version(onnx: bytes) -> dict[str, bytes]:
    """A version's files (python backend) that serve `onnx` and fail ~40 % of rows."""
    files = rollout.version_files(onnx, "python")
    files["model.py"] += FAILING_SUFFIX.encode()
    return files

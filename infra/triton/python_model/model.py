"""Triton python-backend model that serves `model.onnx` from its own version directory.

conveyor copies this file next to `model.onnx` in every version it publishes for the embedded
Triton, whose build carries only the python backend. It keeps the I/O contract of the production
`onnxruntime_onnx` rendering: input `features` FP32 [n], outputs `label` INT64 [1] and
`probabilities` FP32 [n_classes], batched.

It runs inside Triton's python stub, not in conveyor's process, so it imports nothing of conveyor.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # Same parameter names as Triton's onnxruntime backend, so both renderings tune alike.
        options.intra_op_num_threads = int(_parameter(config, "intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(_parameter(config, "inter_op_thread_count", "1"))
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.n_features = int(config["input"][0]["dims"][0])
        # The outputs the config declares, in its order, with the dtype each is answered in.
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]
        ]
        self.what = "probability" if any(n == "probabilities" for n, _ in self.outputs) else "prediction"
        # NaN is a missing value in these columns (the ONNX graph imputes it), an error elsewhere.
        listed = _parameter(config, "nullable_columns", "")
        self.strict = np.ones(self.n_features, dtype=bool)
        self.strict[[int(i) for i in listed.split(",") if i]] = False

    def execute(self, requests):
        responses = [None] * len(requests)
        batches, owners = [], []
        for i, request in enumerate(requests):
            x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            wrong = np.isinf(x) | (np.isnan(x) & self.strict)
            if wrong.any():
                bad = int(wrong.any(axis=1).sum())
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"features contain NaN or infinity in {bad} row(s); send finite FP32 "
                        "values (NaN means missing only in a feature the spec marks nullable)"
                    )
                )
                continue
            batches.append(x)
            owners.append(i)
        if batches:
            # Dynamic batching hands several requests over at once: one onnxruntime call for all.
            names = [name for name, _ in self.outputs]
            values = self.session.run(names, {"features": np.concatenate(batches)})
            start = 0
            for i, x in zip(owners, batches):
                stop = start + len(x)
                answers = [
                    value[start:stop].astype(dtype)
                    for value, (_, dtype) in zip(values, self.outputs)
                ]
                broken = np.zeros(len(x), dtype=bool)
                for answer in answers:
                    if answer.dtype.kind == "f":
                        broken |= ~np.isfinite(answer.reshape(len(x), -1)).all(axis=1)
                if broken.any():
                    # Never a 200 with a NaN in it: a caller would act on a non-number.
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            f"the model produced a non-finite {self.what} for "
                            f"{int(broken.sum())} row(s) of this request; nothing was "
                            "answered for it. Report the rows to the model's owners"
                        )
                    )
                else:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(name, answer)
                            for (name, _), answer in zip(self.outputs, answers)
                        ]
                    )
                start = stop
        return responses

# The Prefect worker image: conveyor and its pinned stack, CUDA-capable onnxruntime optional.
FROM python:3.11-slim
WORKDIR /opt/conveyor
COPY pyproject.toml README.md ./
COPY flows flows
COPY tasks tasks
COPY deployments deployments
COPY infra/triton infra/triton
COPY prefect.yaml ./
RUN pip install --no-cache-dir -e . && useradd --create-home conveyor && \
    mkdir -p /var/lib/conveyor && chown conveyor /var/lib/conveyor
USER conveyor

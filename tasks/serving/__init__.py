"""Triton: model configuration, the control and inference client, rollout of versions, the
embedded server, the smoke test, the swap, client traffic and serving tuning."""

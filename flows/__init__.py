"""Prefect wiring only: one module per flow, composing the stage packages of `tasks`."""

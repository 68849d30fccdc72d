"""The `conveyor` command and its console view; `cli.main:app` is the console script."""

"""The floor every stage stands on: settings, the spec, errors, credentials, storage, the lease,
events, progress, orchestration and the Pushgateway transport. It imports nothing above it."""

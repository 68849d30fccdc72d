"""The MLflow side: tracking runs, registered versions and aliases, their history, approval,
retention, rollback and which spec describes a registered model."""

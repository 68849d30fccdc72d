-- Prefect's database is POSTGRES_DB; MLflow gets its own, and its basic-auth user store another.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;

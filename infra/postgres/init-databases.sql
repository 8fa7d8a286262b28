-- Runs once, when the postgres container initialises an empty data volume (as POSTGRES_USER).
-- Airflow's metadata database is POSTGRES_DB (airflow); MLflow's backend store gets its own.
CREATE DATABASE mlflow;

"""The embedded stack: one cycle through Airflow, the UIs."""

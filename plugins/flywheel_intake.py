"""Mounts the flywheel's HTTP intake (:mod:`tasks.ingest.intake`) on the Airflow API server.

Agents then POST logs to ``<api server>/flywheel/v1/records`` and feedback to
``/flywheel/v1/feedback``. Airflow does not protect plugin apps: the intake checks its own bearer
token ($FLYWHEEL_INTAKE_TOKEN or the password of the connection ``flywheel_intake``) and refuses
everything (503) while none is set. Building the app reads no settings and imports nothing heavy.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tasks.ingest.intake import create_app


class FlywheelIntakePlugin(AirflowPlugin):
    name = "flywheel_intake"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": "/flywheel", "name": "Flywheel intake"},
    ]

"""Flywheel: turn an LLM agent's logs and feedback into smaller, better models.

Each stage of the cycle is a module here (``simulate``, ``ingest``, ``validate``, ``curate``,
``basemodels``, ``finetune``, ``evaluate``, ``gate``, ``register``, ``report``) that runs on its own
through the ``flywheel`` command line and is wired together by the Airflow DAGs in ``dags/``.
"""

__version__ = "0.1.0"

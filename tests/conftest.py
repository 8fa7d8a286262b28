"""Test session setup: one throwaway flywheel home for the whole session, made before anything
imports Airflow or MLflow, so no test touches the developer's own state (or ``~/airflow``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.core.config import Paths, local_environment

SESSION_HOME = Path(tempfile.mkdtemp(prefix="flywheel-test-"))
os.environ.update(local_environment(Paths(SESSION_HOME).ensure(), inherit=False))
os.environ.pop("MLFLOW_TRACKING_URI", None)  # each test home gets its own embedded store
os.environ["TQDM_DISABLE"] = "1"

#: the tiny recipe tests train on (seconds, not minutes)
TEST_BASE = "flywheel-llama-xs"


@pytest.fixture(scope="session")
def session_home() -> Path:
    return SESSION_HOME


@pytest.fixture(scope="session")
def airflow_db(session_home: Path) -> Path:
    """The session's Airflow metadata database (SQLite), migrated once."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return session_home / "airflow" / "airflow.db"


@pytest.fixture(scope="session")
def xs_base_model(session_home: Path) -> Path:
    """The tiny base model, built once per session into the session home."""
    from tasks.demo.basemodels import ensure_base_model

    return ensure_base_model(TEST_BASE, home=session_home)

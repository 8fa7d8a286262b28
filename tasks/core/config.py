"""Paths and constants shared by every stage.

Everything the flywheel writes lives under one home folder, ``$FLYWHEEL_HOME`` (default
``~/.flywheel``), so a demo, a test and a production deployment never mix state. Settings are built
by functions, never at import time, so a test can point ``FLYWHEEL_HOME`` elsewhere and call again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

#: The tool the router calls to hand a query to an expert (OpenAI function-calling format).
ROUTE_TOOL = "route_to"

#: Where the vendored CLINC150 files live inside the installed package.
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "clinc150"


@dataclass(frozen=True)
class Paths:
    """The folders of one flywheel home. Create them with :meth:`ensure`."""

    home: Path

    @property
    def landing(self) -> Path:
        """Incoming log and feedback files (JSONL, JSONL.gz, Parquet)."""
        return self.home / "landing"

    @property
    def staging(self) -> Path:
        """Parsed but not yet validated batches, one folder per run."""
        return self.home / "staging"

    @property
    def store(self) -> Path:
        """The system of record: validated, de-duplicated records as Parquet."""
        return self.home / "store"

    @property
    def quarantine(self) -> Path:
        """Rejected input with the raw text and every reason; nothing is dropped silently."""
        return self.home / "quarantine"

    @property
    def datasets(self) -> Path:
        """Curated, versioned ground-truth datasets, one folder per workload."""
        return self.home / "datasets"

    @property
    def models(self) -> Path:
        """Base models built offline, by recipe digest."""
        return self.home / "models"

    @property
    def runs(self) -> Path:
        """Per-cycle work: adapters, evaluation outputs, reports."""
        return self.home / "runs"

    @property
    def mlflow(self) -> Path:
        """Embedded MLflow: SQLite backend and local artifact root."""
        return self.home / "mlflow"

    @property
    def airflow(self) -> Path:
        """Embedded Airflow home (SQLite metadata database, logs)."""
        return self.home / "airflow"

    @property
    def simulator(self) -> Path:
        """What the traffic simulator knows and the pipeline must not see (gold labels)."""
        return self.home / "simulator"

    def ensure(self) -> Paths:
        for folder in (self.landing, self.staging, self.store, self.quarantine, self.datasets,
                       self.models, self.runs, self.mlflow):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def flywheel_home() -> Path:
    """The home folder: ``$FLYWHEEL_HOME`` or ``~/.flywheel``."""
    return Path(os.environ.get("FLYWHEEL_HOME") or Path.home() / ".flywheel").expanduser().resolve()


def get_paths(home: str | os.PathLike[str] | None = None) -> Paths:
    """Paths of ``home`` (default :func:`flywheel_home`), folders created."""
    return Paths(Path(home).expanduser().resolve() if home else flywheel_home()).ensure()


def run_folder_name(run_id: str) -> str:
    """An Airflow run id (``manual__2026-11-26T04:12:02+00:00``) made safe as a folder name."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def embedded_tracking_uri(paths: Paths) -> str:
    """The embedded MLflow store of a home: SQLite under ``mlflow/``."""
    return f"sqlite:///{paths.mlflow / 'mlflow.db'}"


def mlflow_tracking_uri(paths: Paths | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, or the embedded SQLite store under the home folder."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return embedded_tracking_uri(paths or get_paths())


def mlflow_artifact_root(paths: Paths | None = None) -> str:
    """Artifact root for experiments the flywheel creates on the embedded store."""
    paths = paths or get_paths()
    return (paths.mlflow / "artifacts").as_uri()


def local_environment(paths: Paths | None = None, project_root: Path | None = None,
                      inherit: bool = True) -> dict[str, str]:
    """Environment for the embedded stack: offline, no telemetry, Airflow on SQLite, loopback only.

    Used by the demo, the UI targets and the tests, so all three see the same Airflow and MLflow
    state. With ``inherit``, values already set in the environment win, so a deployment can
    override any of them; tests pass ``inherit=False`` to stay inside their own home.
    """
    import secrets

    paths = paths or get_paths()
    root = project_root or Path(__file__).resolve().parent.parent.parent
    airflow_home = paths.airflow
    airflow_home.mkdir(parents=True, exist_ok=True)
    secret_file = airflow_home / "jwt_secret"
    if not secret_file.exists():  # 64 random bytes, made once per home, never committed
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    defaults = {
        "FLYWHEEL_HOME": str(paths.home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "SCARF_ANALYTICS": "false",
        "TOKENIZERS_PARALLELISM": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": embedded_tracking_uri(paths),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # the wheel turns by itself: a DAG is active from its first parse (ingest every 15
        # minutes, the cycle nightly); a toggle set in the UI is kept from then on
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:8080/execution/",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    if not inherit:
        return defaults
    own = {"FLYWHEEL_HOME", "AIRFLOW_HOME"}  # always this home's: state never mixes across homes
    return {k: v if k in own else os.environ.get(k, v) for k, v in defaults.items()}


def worker_hostname() -> str:
    """The host name Airflow records for the tasks a worker runs (``[core] hostname_callable =
    tasks.core.config.worker_hostname``): ``$FLYWHEEL_WORKER_NAME`` when set, so the UI and the API
    tell apart several workers on one host (say a CPU and a GPU worker); else the FQDN."""
    import socket

    return os.environ.get("FLYWHEEL_WORKER_NAME") or socket.getfqdn()


def utc_window(start: datetime | None, end: datetime | None
               ) -> tuple[datetime | None, datetime | None]:
    """A time window ``(start, end)`` with naive datetimes read as UTC; ``end`` must be after
    ``start`` when both are given (either may be None: an open end).

    Raises:
        ValueError: ``end <= start``.
    """
    from datetime import UTC

    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end is not None and end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    if start is not None and end is not None and end <= start:
        raise ValueError("end must be after start")
    return start, end


#: where ``flywheel serve mlflow`` shows the embedded store (loopback only)
MLFLOW_UI_HOST, MLFLOW_UI_PORT = "127.0.0.1", 5000
MLFLOW_UI_ADDRESS = f"http://{MLFLOW_UI_HOST}:{MLFLOW_UI_PORT}"

STUDENT_PREFIX = "flywheel-"
"""Logged model names the flywheel's own routers carry (:mod:`tasks.serving.agent`): never the
teacher."""

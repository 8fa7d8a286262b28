"""Open the embedded state in its UIs, bound to 127.0.0.1 only.

    flywheel serve airflow    # Airflow UI and API on http://127.0.0.1:8080 (standalone: SQLite)
    flywheel serve mlflow     # MLflow UI on http://127.0.0.1:5000 (the same SQLite store)

Both read the home the demo wrote (``$FLYWHEEL_HOME``). Stop with Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.config import get_paths, local_environment, mlflow_artifact_root


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] not in {"airflow", "mlflow"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    paths = get_paths()
    env = {**os.environ, **local_environment(paths)}
    bin_dir = Path(sys.executable).parent
    if argv[0] == "mlflow":
        command = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri",
                   env["MLFLOW_TRACKING_URI"], "--default-artifact-root",
                   mlflow_artifact_root(paths), "--host", "127.0.0.1", "--port", "5000"]
    else:
        subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        command = [str(bin_dir / "airflow"), "standalone"]
    print("$", " ".join(command), flush=True)
    os.execve(command[0], command, env)
    return 0  # unreachable: execve replaces this process

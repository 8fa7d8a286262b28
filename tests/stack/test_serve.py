"""`flywheel serve airflow` prepares the embedded Airflow: DAGs serialized before the UI starts,
the cycle and ingest DAGs active, a DAG the user switched off left off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.core.config import get_paths, local_environment
from tasks.stack.serve import prepare_dags


def test_dags_are_serialized_and_active_and_a_user_pause_is_kept(tmp_path: Path) -> None:
    env = {**os.environ, **local_environment(get_paths(str(tmp_path)), inherit=False)}
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

    lines = prepare_dags(airflow, env)
    assert "  flywheel_cycle: active" in lines
    assert "  flywheel_ingest: active" in lines

    subprocess.run([airflow, "dags", "pause", "flywheel_cycle"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    again = prepare_dags(airflow, env)  # the next `flywheel serve airflow`
    assert ("  flywheel_cycle: paused (switch it on in the UI, or: airflow dags unpause "
            "flywheel_cycle)") in again
    assert "  flywheel_ingest: active" in again

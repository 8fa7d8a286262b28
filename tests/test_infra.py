"""infra/ agrees with the code: files parse, versions match the pins, every variable set is one
something reads, queues and pools match the DAG and the catalog, secrets come only from the
environment, published ports bind 127.0.0.1.

Docker and Helm are not on the machines this suite runs on, so nothing here starts a container or
renders the chart; the integration tier (tests/integration/) runs the same settings against real
Postgres, MLflow and Airflow processes instead.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
HELM_VALUES = INFRA / "helm" / "values.yaml"
DOCKERFILE = INFRA / "Dockerfile"
ENV_EXAMPLE = INFRA / ".env.example"
HOSTFILE = INFRA / "deepspeed" / "hostfile"
DEFAULT_QUEUE = "default"

#: variables the container images themselves read (their documented settings), not our code
IMAGE_VARIABLES = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "qdrant/qdrant": {"QDRANT__SERVICE__API_KEY"},
}
#: read by the NVIDIA container runtime, the official Airflow image's entrypoint, and boto3 (not
#: installed in this venv: it comes with the image's amazon provider)
RUNTIME_VARIABLES = {"NVIDIA_VISIBLE_DEVICES", "DUMB_INIT_SETSID", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY"}
#: options of the Celery provider, which ships in the Airflow image but not in this venv
CELERY_PROVIDER_OPTIONS = {("celery", "broker_url"), ("celery", "result_backend")}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|API_KEY|ACCESS_KEY")


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@cache
def helm() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line):
            found[match.group(1).lower()] = match.group(2)
    return found


def image_of(service: dict) -> tuple[str, str]:
    name, _, tag = service["image"].rpartition(":")
    return name, tag


def worker_queues() -> dict[str, set[str]]:
    """Celery workers in the compose file: service -> the queues it consumes."""
    queues = {}
    for name, service in services().items():
        command = service.get("command") or []
        if command[:2] == ["celery", "worker"]:
            queues[name] = set(command[command.index("--queues") + 1].split(","))
    return queues


def catalog_queues() -> set[str]:
    data = yaml.safe_load((ROOT / "tasks" / "training" / "configs" / "candidates.yaml").read_text())
    queues = set()
    for entry in data.get("candidates", []):
        queue = entry.get("queue") or (entry.get("resources") or {}).get("queue")
        queues.add(queue or DEFAULT_QUEUE)
    return queues


@cache
def dag_tasks() -> list:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return [task for dag in bag.dags.values() for task in dag.tasks]


@cache
def airflow_options() -> set[tuple[str, str]]:
    import airflow

    template = Path(airflow.__file__).parent / "config_templates" / "config.yml"
    sections = yaml.safe_load(template.read_text())
    return {(section, option) for section, body in sections.items()
            for option in (body.get("options") or {})} | CELERY_PROVIDER_OPTIONS


@cache
def project_source() -> str:
    return "\n".join(p.read_text() for folder in ("tasks", "plugins", "dags")
                     for p in (ROOT / folder).rglob("*.py"))


@cache
def mlflow_source() -> str:
    import mlflow

    return (Path(mlflow.__file__).parent / "environment_variables.py").read_text()


def is_read(variable: str, service: dict) -> bool:
    """Whether something in this stack reads ``variable``."""
    if variable.startswith("AIRFLOW__"):
        section, _, option = variable[len("AIRFLOW__"):].lower().partition("__")
        return (section, option) in airflow_options()
    image = image_of(service)[0] if "image" in service and "build" not in service else ""
    if variable in IMAGE_VARIABLES.get(image, set()) or variable in RUNTIME_VARIABLES:
        return True
    if variable.startswith("MLFLOW_") and f'"{variable}"' in mlflow_source():
        return True
    if f'"{variable}"' in project_source():
        return True
    return variable in str(service.get("command", ""))  # an inline script of the service


# --------------------------------------------------------------------------------------------


def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert COMPOSE in files and HELM_VALUES in files
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_compose_references_resolve():
    names = set(services())
    for name, service in services().items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in names, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose()["volumes"], f"{name} mounts undeclared {source}"
    # every ${VAR} the compose file needs is documented in .env.example
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert needed <= documented, f"undocumented: {sorted(needed - documented)}"


def test_images_and_versions_agree_with_the_pins():
    pinned = pins()
    dockerfile = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    assert args["AIRFLOW_VERSION"] == pinned["apache-airflow"]
    python = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())
    assert args["PYTHON_VERSION"] == python.group(1)
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in dockerfile
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile

    assert helm()["airflowVersion"] == helm()["defaultAirflowTag"] == pinned["apache-airflow"]
    flywheel_image = compose()["x-flywheel-image"]["image"]
    assert flywheel_image.endswith(f":{pinned['apache-airflow']}}}")
    for name, service in services().items():
        if "build" in service:  # the flywheel image: Airflow and MLflow at the pinned versions
            assert service["image"] == flywheel_image, name
            continue
        image, tag = image_of(service)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: unpinned {image}"
    # Qdrant's client warns past one minor version of skew with the server
    qdrant_tag = image_of(services()["qdrant"])[1].lstrip("v")
    assert qdrant_tag.split(".")[:2] == pinned["qdrant-client"].split(".")[:2]
    # the Postgres major the integration tier tests against
    from tests.integration.servers import postgres_bindir

    bindir = postgres_bindir()
    if bindir is not None and bindir.parent.name.isdigit():
        assert image_of(services()["postgres"])[1].split(".")[0] == bindir.parent.name
    # the metadata and backend-store URLs name a driver that is installed
    import psycopg2  # noqa: F401

    airflow_env = compose()["x-airflow-common"]["environment"]
    assert airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    mlflow_command = services()["mlflow"]["command"]
    backend = mlflow_command[mlflow_command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("/mlflow")
    assert "CREATE DATABASE mlflow" in (INFRA / "postgres" / "init-databases.sql").read_text()


def test_every_variable_set_is_read_by_something():
    for name, service in services().items():
        for variable in service.get("environment") or {}:
            assert is_read(variable, service), f"{name} sets {variable}, which nothing reads"
    for entry in helm()["env"]:
        assert is_read(entry["name"], {}), f"helm env sets {entry['name']}, which nothing reads"


def test_the_switches_from_embedded_defaults_are_set():
    from tasks.core.config import local_environment
    from tasks.curation import vectors

    airflow_env = compose()["x-airflow-common"]["environment"]
    assert airflow_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert airflow_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert airflow_env[vectors.URL_ENV] == "http://qdrant:6333"
    assert vectors.API_KEY_ENV in airflow_env
    # the same names local_environment() gives its embedded defaults under
    embedded = local_environment(inherit=False)
    for variable in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR",
                     "MLFLOW_TRACKING_URI", "FLYWHEEL_HOME",
                     "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        assert variable in embedded and variable in airflow_env, variable
    # FLYWHEEL_HOME is one volume every Airflow container shares
    home = airflow_env["FLYWHEEL_HOME"]
    assert any(v.endswith(f":{home}") for v in compose()["x-airflow-common"]["volumes"])
    helm_env = {e["name"]: e.get("value") for e in helm()["env"]}
    assert helm_env["MLFLOW_TRACKING_URI"].startswith("http://")
    assert helm_env[vectors.URL_ENV].startswith("http://")
    assert helm_env["FLYWHEEL_HOME"] in {m["mountPath"] for m in helm()["volumeMounts"]}
    assert helm()["executor"] == "CeleryExecutor"


def test_queues_match_the_dag_and_the_catalog():
    consumed = worker_queues()
    assert consumed, "no Celery worker in the compose file"
    all_consumed = set().union(*consumed.values())
    default = compose()["x-airflow-common"]["environment"]["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert default == DEFAULT_QUEUE and default in all_consumed
    gpu_workers = {n for n, s in services().items() if "deploy" in s}
    assert gpu_workers, "no worker reserves a GPU"
    gpu_queues = set().union(*(consumed[n] for n in gpu_workers))
    # the GPU worker serves exactly the queues GPU candidates name, and every queue has a worker
    used = catalog_queues() | {t.queue for t in dag_tasks()}
    assert gpu_queues <= used, f"GPU worker queues {gpu_queues} that nothing uses"
    assert used <= all_consumed, f"queues without a worker: {sorted(used - all_consumed)}"
    helm_queues = {s["queue"] for s in helm()["workers"]["celery"]["sets"]} | {DEFAULT_QUEUE}
    assert used <= helm_queues and gpu_queues <= helm_queues
    # each candidate trains on its own queue (the DAG has a training task per queue): nothing
    # sends every job to one queue any more
    assert "FLYWHEEL_TRAINING_QUEUE" not in compose()["x-airflow-common"]["environment"]
    assert "FLYWHEEL_TRAINING_QUEUE" not in {e["name"] for e in helm()["env"]}


def test_pools_named_by_tasks_are_created():
    needed = {t.pool for t in dag_tasks()} - {"default_pool"}
    init = "\n".join(services()["airflow-init"]["command"])
    created = set(re.findall(r"airflow pools set (\S+)", init))
    assert needed <= created, f"pools never created: {sorted(needed - created)}"
    helm_text = HELM_VALUES.read_text()
    for pool in needed:
        assert f"airflow pools set {pool}" in helm_text, pool


def test_gpu_reservations():
    for name, service in services().items():
        if "deploy" not in service:
            continue
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    gpu_sets = [s for s in helm()["workers"]["celery"]["sets"]
                if "nvidia.com/gpu" in s["resources"]["limits"]]
    assert gpu_sets, "no Helm worker set asks for nvidia.com/gpu"
    for worker_set in gpu_sets:
        assert int(worker_set["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert worker_set["nodeSelector"], "GPU workers need a node selector for the GPU pool"
        assert any(t["key"] == "nvidia.com/gpu" for t in worker_set["tolerations"])


def test_published_ports_bind_loopback_and_stores_stay_internal():
    for name, service in services().items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
    for internal in ("postgres", "redis"):
        assert not services()[internal].get("ports"), f"{internal} must not be published"


def _secret_literals(mapping: dict, where: str) -> list[str]:
    bad = []
    for key, value in mapping.items():
        text = str(value)
        if SECRET_NAME.search(key) and not text.startswith("${"):
            bad.append(f"{where}: {key}")
        if "://" in text and "@" in text and "${" not in text.split("@")[0]:
            bad.append(f"{where}: {key} has credentials in its URL")
    return bad


def test_secrets_come_only_from_the_environment():
    bad = []
    for name, service in services().items():
        bad += _secret_literals(service.get("environment") or {}, name)
        command = service.get("command") or []
        bad += _secret_literals({f"command[{i}]": c for i, c in enumerate(command)
                                 if isinstance(c, str) and "://" in c}, name)
    assert not bad, bad
    for entry in helm()["env"]:
        assert not SECRET_NAME.search(entry["name"]), f"helm env has secret {entry['name']}"
    for key in ("fernetKey", "webserverSecretKey", "apiSecretKey", "jwtSecret"):
        assert not helm().get(key), f"helm values hold {key}: use a secret"
    assert not (helm().get("data") or {}).get("metadataConnection")
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if SECRET_NAME.search(key) and not line.startswith("#"):
            assert value == "", f".env.example ships a value for {key}"


def test_deepspeed_hostfile():
    hosts = []
    for line in HOSTFILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+) slots=(\d+)", line.strip())
        assert match, f"not '<host> slots=<n>': {line!r}"
        assert int(match.group(2)) >= 1
        hosts.append(match.group(1))
    assert len(hosts) >= 2 and len(hosts) == len(set(hosts))


@pytest.mark.parametrize("path", [COMPOSE, HELM_VALUES, DOCKERFILE, ENV_EXAMPLE, HOSTFILE])
def test_no_machine_paths(path):
    text = path.read_text()
    assert "/work/" not in text and "/tmp/" not in text and "/root/" not in text

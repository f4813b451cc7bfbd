"""The team stack's database for real: docker/postgres/init-databases.sh run by psql against a real PostgreSQL server
(Debian's `postgresql` package; started here on a free loopback port in a temporary folder), then MLflow and Prefect
pointed at it, each under its own role. Skips, saying why, where no server binaries are installed."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers import PROJECT

SUPERUSER_PW = "su-pw-for-tests-123456"
# Passwords as users write them: quotes, a semicolon and SQL that must stay a password; `/`, `@`, `:` and `#` for the
# connection URLs (URL-encoded there).
PASSWORDS = {"mlflow": "ml'fl\"ow; DROP ROLE prefect; --/@:#pw", "prefect": "pre fect/+base64==@:#"}


@dataclass
class Postgres:
    port: int
    bin: Path

    def url(self, role: str, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{role}:{quote(PASSWORDS[role], safe='')}@127.0.0.1:{self.port}/{db}"

    def connect(self, role: str, db: str, password: str | None = None) -> Any:
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=role, dbname=db, connect_timeout=10,
                                password=password if password is not None else PASSWORDS.get(role, SUPERUSER_PW))


def _server_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them out of PATH), or initdb's on PATH."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _as_server_user() -> list[str]:
    """How to run the server binaries: PostgreSQL refuses to run as root, so root runs them as `postgres`."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run the server as (PostgreSQL refuses root)")
    if not shutil.which("runuser"):
        pytest.skip("running as root without `runuser` to start the server as `postgres` (PostgreSQL refuses root)")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bin_dir = _server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH: "
                    "install Debian's `postgresql` package (.ci/run does)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary (the dev extra) is needed to talk to the server")
    prefix = _as_server_user()
    base = Path(tempfile.mkdtemp(prefix="dfd-pg-"))
    (base / "pw").write_text(SUPERUSER_PW)
    if prefix:
        uid, gid = pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid
        for path in (base, base / "pw"):
            os.chown(path, uid, gid)
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *cmd], cwd=base, capture_output=True, text=True, timeout=120)

    init = run(str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", "postgres", "--auth=scram-sha-256",
               f"--pwfile={base / 'pw'}", "-E", "UTF8", "--locale=C")
    assert init.returncode == 0, init.stderr
    # TCP on loopback only, no Unix socket: password authentication for every role, as in the compose stack.
    start = run(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"), "-w", "-t", "60",
                "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''", "start")
    assert start.returncode == 0, start.stderr + (base / "server.log").read_text()
    try:
        yield Postgres(port, bin_dir)
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def initialised(postgres: Postgres) -> Postgres:
    """The compose stack's first start of the database volume: its init script, as the image's entrypoint runs it."""
    env = {**os.environ, "POSTGRES_USER": "postgres", "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port),
           "PGPASSWORD": SUPERUSER_PW, "MLFLOW_DB_PASSWORD": PASSWORDS["mlflow"],
           "PREFECT_DB_PASSWORD": PASSWORDS["prefect"], "PATH": f"{postgres.bin}:{os.environ.get('PATH', '')}"}
    res = subprocess.run(["bash", str(PROJECT / "docker" / "postgres" / "init-databases.sh")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return postgres


def _refused(postgres: Postgres, role: str, db: str, password: str | None = None) -> str:
    import psycopg2

    with pytest.raises(psycopg2.OperationalError) as err:
        postgres.connect(role, db, password).close()
    return str(err.value)


def test_each_service_gets_its_own_database_and_nothing_more(initialised: Postgres) -> None:
    pg = initialised
    for role, other in (("mlflow", "prefect"), ("prefect", "mlflow")):
        with pg.connect(role, role) as conn, conn.cursor() as cur:  # its own: it creates its tables there
            cur.execute("CREATE TABLE t (x int)")
            cur.execute("INSERT INTO t VALUES (1)")
        assert "permission denied for database" in _refused(pg, role, other)
        assert "password authentication failed" in _refused(pg, role, role, password="wrong-password")
    with pg.connect("postgres", "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles"
                    " WHERE rolname IN ('mlflow', 'prefect') ORDER BY rolname")
        assert cur.fetchall() == [("mlflow", False, False, False, False, False),
                                  ("prefect", False, False, False, False, False)]
        cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname IN ('mlflow', 'prefect')"
                    " ORDER BY datname")
        assert cur.fetchall() == [("mlflow", "mlflow"), ("prefect", "prefect")]
        # Any other login (a role added later for something else) reaches neither: REVOKE ... FROM PUBLIC held.
        cur.execute("CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw-123456'")
        conn.commit()
    for db in ("mlflow", "prefect"):
        assert "permission denied for database" in _refused(pg, "outsider", db, password="outsider-pw-123456")


@pytest.mark.slow
def test_mlflow_and_prefect_run_on_their_own_roles(initialised: Postgres, tmp_path: Path) -> None:
    """MLflow creates its schema and records a run as `mlflow`; Prefect migrates its schema as `prefect`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=initialised.url("mlflow", "mlflow", "postgresql+psycopg2"))  # as compose
    exp = client.create_experiment("on-postgres", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "auc", 0.9)
    assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.9}
    with initialised.connect("mlflow", "mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchall() == [("mlflow",)]

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_DATABASE_CONNECTION_URL=initialised.url("prefect", "prefect", "postgresql+asyncpg"),
               PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    res = subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    with initialised.connect("prefect", "prefect") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT tableowner) FROM pg_tables WHERE schemaname = 'public' "
                    "AND tableowner = 'prefect'")
        tables, owners = cur.fetchone()
        assert tables > 10 and owners == 1

"""The migrate Job's steps, their own commands from the rendered Job, against a real
PostgreSQL: the admin URL becomes a libpq service file (pg-service), the migrations
run as the admin (migrate), and psql, given no URL on its command line, makes the
service's and the read API's LOGIN roles (service-login, api-login). The admin's
password has the characters a URL must percent-encode.

The containers' paths are mapped to the files they mount: /files to the compose
init scripts (the ConfigMap healthscore-jobs-files), /pg-service to
deploy/k8s/jobs, /run/pg to a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
import yaml

from tests.utils.pg_cluster import Server, postgres_bin_dir

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "a:b@c/d%e f#g?h&i=j"
SERVICE_PASSWORD = "service-login-password"


def migrate_job() -> dict[str, Any]:
    command = ["kubectl", "kustomize"] if shutil.which("kubectl") else ["kustomize", "build"]
    if shutil.which(command[0]) is None:
        pytest.skip("neither kubectl nor kustomize on PATH")
    out = subprocess.run(
        [*command, str(ROOT / "deploy" / "k8s" / "jobs")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (job,) = [
        o
        for o in yaml.safe_load_all(out)
        if o and o["kind"] == "Job" and o["metadata"]["name"] == "healthscore-migrate"
    ]
    return dict(job["spec"]["template"]["spec"])


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return dict(found)


def run_step(
    step: dict[str, Any], secrets: dict[str, str], paths: dict[str, str], base_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A container's command and args, with its environment: literal values as they are,
    secretKeyRef values from `secrets` (by key), container paths mapped by `paths`."""

    def mapped(text: str) -> str:
        for inside, outside in paths.items():
            text = text.replace(inside, outside)
        return text

    env = dict(base_env)
    for variable in step.get("env", []):
        if "value" in variable:
            env[variable["name"]] = mapped(variable["value"])
        else:
            env[variable["name"]] = secrets[variable["valueFrom"]["secretKeyRef"]["key"]]
    # no command: the image's entrypoint (deploy/docker/Dockerfile: healthscore)
    command = step.get("command", ["healthscore"])
    words = [mapped(word) for word in command + step.get("args", [])]
    return subprocess.run(words, env=env, capture_output=True, text=True, timeout=600)


async def test_the_migrate_job_steps_make_the_logins_without_a_url_on_a_command_line() -> None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries")
    spec = migrate_job()
    server = Server(bin_dir)
    run_pg = Path(tempfile.mkdtemp(prefix="healthscore-run-pg-"))
    try:
        server.require_passwords()
        with server.started(listen_addresses="127.0.0.1"):
            server.psql(f"ALTER ROLE postgres PASSWORD '{ADMIN_PASSWORD}'")
            server.psql("CREATE DATABASE healthscore")
            admin_url = (
                f"postgresql://postgres:{quote(ADMIN_PASSWORD, safe='')}@127.0.0.1:"
                f"{server.port}/healthscore?sslmode=disable&application_name=migrate-job"
            )
            secrets = {
                "migration-database-url": admin_url,
                "service-db-login": "healthscore_svc",
                "service-db-password": SERVICE_PASSWORD,
                "api-db-login": "healthscore_api",
                "api-db-password": "api-login-password",
                "db-signing-key-id": "1000",
                "db-signing-key": "ab" * 32,
            }
            paths = {
                "/pg-service/": f"{ROOT}/deploy/k8s/jobs/",
                "/files/": f"{ROOT}/deploy/compose/init/",
                "/run/pg": str(run_pg),
            }
            # the client's environment without the server's socket: TCP as in the pod
            base_env = {
                k: v for k, v in server.client_env().items() if k not in ("PGHOST", "PGPORT")
            }
            base_env["PATH"] = f"{Path(sys.executable).parent}:{base_env['PATH']}"

            step = container(spec, "pg-service")
            done = run_step(step, secrets, paths, base_env)
            assert done.returncode == 0, done.stderr
            assert (run_pg / "pg_service.conf").stat().st_mode & 0o077 == 0
            for name in ("migrate", "service-login", "api-login"):
                done = run_step(container(spec, name), secrets, paths, base_env)
                assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"

            # the service's login works, and its sessions run as healthscore_writer
            connection = await asyncpg.connect(
                host="127.0.0.1",
                port=server.port,
                user="healthscore_svc",
                password=SERVICE_PASSWORD,
                database="healthscore",
            )
            try:
                assert await connection.fetchval("SELECT current_user") == "healthscore_writer"
            finally:
                await connection.close()
    finally:
        shutil.rmtree(run_pg, ignore_errors=True)
        server.remove()


def test_a_url_the_service_file_cannot_carry_is_refused_without_showing_it() -> None:
    env = {
        **os.environ,
        "MIGRATION_DATABASE_URL": "postgresql://postgres:s3cret@h1:5432,h2:5432/healthscore",
    }
    with tempfile.TemporaryDirectory() as directory:
        done = subprocess.run(
            [sys.executable, str(ROOT / "deploy/k8s/jobs/pg-service.py"), f"{directory}/f"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2
        assert "several hosts" in done.stderr and "s3cret" not in done.stderr
        assert not Path(f"{directory}/f").exists()

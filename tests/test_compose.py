"""docker-compose.yml cannot be run here (no Docker engine), so it is checked against the compose
specification and against the rules that make scaling safe."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SCALABLE = ("ingest", "voting", "trainer", "publisher")


def validate(path: Path) -> subprocess.CompletedProcess:
    check = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or "check-jsonschema"
    return subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.integration  # check-jsonschema runs as a process of its own
def test_the_file_follows_the_compose_specification():
    result = validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_the_validator_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("condition: service_healthy", "condition: when_it_feels_like_it", 1)
    )
    assert validate(broken).returncode != 0


def test_infrastructure_and_every_service_are_there(compose):
    assert {"rabbitmq", "postgres", "migrate", *SCALABLE} <= set(compose["services"])


@pytest.mark.parametrize("name", SCALABLE)
def test_scalable_services_can_be_scaled(compose, name):
    service = compose["services"][name]
    assert "container_name" not in service
    for port in service.get("ports", []):
        assert ":" not in str(port), f"{name} publishes a fixed host port {port!r}"


@pytest.mark.parametrize("name", SCALABLE)
def test_services_start_after_healthy_infrastructure_and_migrations(compose, name):
    service = compose["services"][name]
    depends = service["depends_on"]
    assert depends["rabbitmq"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert service["healthcheck"]["test"]


def test_infrastructure_has_health_checks_and_migrate_runs_once(compose):
    for name in ("rabbitmq", "postgres"):
        assert compose["services"][name]["healthcheck"]["test"]
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["python", "-m", "migrations"]
    assert migrate["restart"] == "no"

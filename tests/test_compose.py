"""docker-compose.yml cannot be run here (no Docker engine), so it is checked against the compose
specification and against the rules that make scaling safe."""

import re
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


PROXY_CONF = ROOT / "deploy" / "ingest-proxy.conf"


def _server_blocks(conf: str) -> dict[str, str]:
    """{listen port: the text of its server block} of the proxy's nginx configuration."""
    blocks = {}
    for block in re.split(r"^server \{", conf, flags=re.MULTILINE)[1:]:
        port = re.search(r"listen (\d+);", block).group(1)
        blocks[port] = block
    return blocks


def test_ingest_is_reachable_only_through_the_proxy(compose):
    ingest = compose["services"]["ingest"]
    assert "ports" not in ingest, "ingest must not be published on the host: clients go through the proxy"
    proxy = compose["services"]["proxy"]
    public, operators = proxy["ports"]
    assert public.endswith(":8080") and not public.startswith("127.0.0.1")
    assert operators.startswith("127.0.0.1:") and operators.endswith(":8081")
    proxy_address = proxy["networks"]["default"]["ipv4_address"]
    assert ingest["environment"]["WARP_TRUSTED_PROXIES"] == f"{proxy_address}/32"


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ("/contribute", True),
        ("/contribute/bulk-crops", True),
        ("/v1/contributions/crops", True),
        ("/model/version", True),
        ("/knowledge", True),
        ("/config/labels", True),
        ("/health", True),
        ("/admin/train", False),
        ("/admin", False),
        ("/admin/dead-letters/voting/replay", False),
        ("/metrics", False),
        ("/ready", False),
        ("/docs", False),
        ("/openapi.json", False),
    ],
)
def test_the_public_port_never_serves_admin_or_metrics(path, public):
    blocks = _server_blocks(PROXY_CONF.read_text())
    refused = re.search(r"location ~ (\S+) \{\s*return 404;", blocks["8080"]).group(1)
    assert (re.match(refused, path) is None) == public
    assert "return 404" not in blocks["8081"]


def test_the_client_cannot_choose_the_address_it_is_charged_to():
    conf = PROXY_CONF.read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf
    assert "proxy_add_x_forwarded_for" not in conf


def test_passwords_and_secrets_have_no_defaults():
    text = COMPOSE.read_text()
    for variable in ("WARP_POSTGRES_PASSWORD", "WARP_RABBITMQ_PASSWORD", "WARP_ORIGIN_SECRET"):
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses, variable
        assert all(use.startswith(":?") for use in uses), (variable, uses)


def test_the_proxy_streams_bodies_to_ingest_limits_each_client_and_answers_503_when_ingest_is_down():
    public = _server_blocks(PROXY_CONF.read_text())["8080"]
    conf = PROXY_CONF.read_text()
    assert (
        "proxy_request_buffering off;" in conf
    )  # ingest's bytes-in-flight and read-timeout bounds see bodies
    assert "limit_conn connections_per_client" in public and "limit_req zone=requests_per_client" in public
    assert "error_page 502 504 =503 @ingest_unavailable;" in public
    assert re.search(r"location @ingest_unavailable \{[^}]*return 503", public)

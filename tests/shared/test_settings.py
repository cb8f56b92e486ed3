import pytest

from services.ingest.settings import IngestSettings
from services.publisher.settings import PublisherSettings
from services.trainer.settings import TrainerSettings
from services.voting.settings import VotingSettings
from shared.settings import CommonSettings, ConfigError, load_settings


@pytest.mark.parametrize(
    "settings_class", [CommonSettings, IngestSettings, VotingSettings, TrainerSettings, PublisherSettings]
)
def test_defaults_describe_a_runnable_local_service(settings_class, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("WARP_"):
            monkeypatch.delenv(name)
    settings = load_settings(settings_class)
    assert settings.broker_url.startswith("amqp://")
    assert settings.database_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("WARP_BROKER_URL", "http://rabbit:5672", "amqp://"),
        ("WARP_DATABASE_URL", "postgresql://db/warp", "asyncpg"),
        ("WARP_BROKER_NAMESPACE", "Bad Name!", "a-z"),
        ("WARP_LOG_LEVEL", "chatty", "DEBUG"),
        ("WARP_DATABASE_POOL_SIZE", "zero", "integer"),
    ],
)
def test_a_bad_variable_fails_at_start_up_naming_it(monkeypatch, variable, value, complaint):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings(CommonSettings)
    message = str(error.value)
    assert variable in message
    assert complaint in message


def test_secrets_in_a_bad_url_are_not_repeated(monkeypatch):
    monkeypatch.setenv("WARP_BROKER_URL", "http://user:hunter2@rabbit/")
    with pytest.raises(ConfigError) as error:
        load_settings(CommonSettings)
    assert "hunter2" not in str(error.value)


def test_service_specific_settings_are_validated(monkeypatch):
    monkeypatch.setenv("WARP_ADMIN_KEY", "short")
    monkeypatch.setenv("WARP_BUDGET_MINUTES", "-1")
    with pytest.raises(ConfigError, match="WARP_ADMIN_KEY: .*16 characters"):
        load_settings(IngestSettings)
    with pytest.raises(ConfigError, match="WARP_BUDGET_MINUTES"):
        load_settings(TrainerSettings)


def test_trusted_proxies_are_read_as_networks(monkeypatch):
    monkeypatch.setenv("WARP_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    settings = load_settings(IngestSettings)
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]


def test_the_hub_token_never_shows_in_a_repr(monkeypatch):
    monkeypatch.setenv("WARP_HF_TOKEN", "hf_secret_value")
    settings = load_settings(PublisherSettings)
    assert "hf_secret_value" not in repr(settings)
    assert settings.hf_token.get_secret_value() == "hf_secret_value"


def test_an_unparseable_list_names_its_variable(monkeypatch):
    monkeypatch.setenv("WARP_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match="WARP_TRUSTED_PROXIES"):
        load_settings(IngestSettings)


def test_empty_secrets_from_compose_mean_unset(monkeypatch):
    # docker-compose.yml passes ${WARP_ADMIN_KEY:-} and ${WARP_HF_TOKEN:-}: empty when the operator set nothing
    monkeypatch.setenv("WARP_ADMIN_KEY", "")
    monkeypatch.setenv("WARP_HF_TOKEN", "")
    assert load_settings(IngestSettings).admin_key is None  # admin disabled, not a start-up error
    assert load_settings(PublisherSettings).hf_token is None  # publish to the local hub directory

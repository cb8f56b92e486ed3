"""Settings every service shares, read from ``WARP_*`` environment variables and validated at start-up."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shared.topology import Topology

ENV_PREFIX = "WARP_"
_NAMESPACE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


class ConfigError(SystemExit):
    """Raised at start-up when the environment does not describe a runnable service."""


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class CommonSettings(BaseSettings):
    # env_ignore_empty: compose passes an unset ${WARP_ADMIN_KEY:-} or ${WARP_HF_TOKEN:-} as "", meaning unset
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True
    )

    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        description="AMQP URL of RabbitMQ, e.g. amqp://user:password@host:5672/vhost",
    )
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/warp",
        description="SQLAlchemy URL of Postgres with the asyncpg driver",
    )
    broker_namespace: str = Field(
        "warp",
        description="prefix of every exchange and queue name, so several deployments can share a vhost",
    )
    delivery_limit: int = Field(
        10,
        ge=1,
        le=1000,
        description="deliveries of a failing message before it is dead-lettered; fixed when the queues are first declared",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (case-insensitive)")
    log_format: LogFormat = Field(
        LogFormat.TEXT, description="json: one JSON object per line (compose sets it); text: readable lines"
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        le=100,
        description="Postgres pool per process: this many connections plus as many overflow; each ingest HTTP "
        "worker also opens a quota pool of this size",
    )

    @field_validator("broker_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError(f"must start with amqp:// or amqps://, got {_redact(value)!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError(
                f"must start with postgresql+asyncpg:// (the asyncpg driver), got {_redact(value)!r}"
            )
        return value

    @field_validator("broker_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError("must be 1-40 characters of a-z, 0-9, '_' or '-', starting with a letter")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    def topology(self) -> Topology:
        return Topology(namespace=self.broker_namespace, delivery_limit=self.delivery_limit)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):([^@]*)@", r"//\1:***@", url)


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(settings_class: type[SettingsT], **overrides: object) -> SettingsT:
    """Build settings from the environment; on error exit with one line per bad variable."""
    try:
        return settings_class(**overrides)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else "?"
            lines.append(f"  {ENV_PREFIX}{field.upper()}: {problem['msg']}")
        raise ConfigError(f"invalid {settings_class.__name__} configuration:\n" + "\n".join(lines)) from None
    except SettingsError as error:
        field = re.search(r'field "([^"]+)"', str(error))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a WARP_* variable"
        raise ConfigError(
            f"invalid {settings_class.__name__} configuration:\n  {name}: {error.__cause__ or error}"
        ) from None

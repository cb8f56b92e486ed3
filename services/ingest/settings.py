from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="address ingest listens on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535, description="ingest's HTTP port: API, /health, /ready, /metrics")
    http_workers: int = Field(2, ge=1, le=64, description="HTTP worker processes; one per core is right")
    admin_key: SecretStr | None = Field(None, description="enables /admin/* when set; at least 16 characters")
    install_daily_limit: int = Field(2000, ge=1, description="contributions per install per UTC day")
    ip_daily_limit: int = Field(10000, ge=1, description="contributions per client IP per UTC day")
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="comma-separated peers whose X-Forwarded-For is believed, e.g. 10.0.0.0/8,127.0.0.1",
    )
    read_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="how long each HTTP worker caches /model/version, /knowledge, /config/labels",
    )
    publish_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="wait for RabbitMQ's publish confirm before answering 503"
    )
    image_check_threads: int = Field(
        2, ge=1, le=64, description="threads per HTTP worker that decode and check images, off the event loop"
    )
    image_check_queue: int = Field(
        16, ge=0, le=10_000, description="requests queued per HTTP worker for image checks; beyond: 503"
    )
    reject_budget: int = Field(
        100,
        ge=1,
        description="rejected images or requests an origin (client address) may send per window before its "
        "contribution requests are answered 429 unread; per HTTP worker",
    )
    reject_window_seconds: float = Field(
        60.0, gt=0, le=86_400, description="the window over which an origin's reject budget refills"
    )
    max_bytes_in_flight: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="request body bytes an HTTP worker holds at once (declared or received); more: 503 "
        "with Retry-After. Keep it above the largest route's body limit (100 MiB)",
    )
    body_read_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="a request body not fully received this long after its start: 408"
    )

    @field_validator("admin_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (or unset to disable admin endpoints)")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]
        return value

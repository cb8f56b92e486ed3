from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from services.ingest.ratelimit import Quota
from shared.settings import CommonSettings

# secret setting -> (its least length, what else to do)
_SECRET_MINIMUM = {
    "admin_key": (16, "or unset to disable admin endpoints"),
    "origin_secret": (32, "e.g. `openssl rand -hex 32`, or unset"),
}


class IngestSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="address ingest listens on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535, description="ingest's HTTP port: API, /health, /ready, /metrics")
    http_workers: int = Field(2, ge=1, le=64, description="HTTP worker processes; one per core is right")
    admin_key: SecretStr | None = Field(
        None, description="enables /admin/* and the console (/console) when set; at least 16 characters"
    )
    console_session_minutes: int = Field(
        480, ge=5, le=7 * 24 * 60, description="how long a console login lasts before the key is asked again"
    )
    console_secure_cookie: bool = Field(
        False,
        description="mark the console's session cookie Secure (sent over HTTPS only): set it when a TLS proxy "
        "serves ingest",
    )
    install_daily_limit: int = Field(2000, ge=1, description="contributions per install per UTC day")
    ip_daily_limit: int = Field(10000, ge=1, description="contributions per client origin per UTC day")
    install_daily_bytes: int = Field(
        300_000_000,
        ge=1,
        description="bytes of accepted images per install per UTC day (2,000 crops at their 150,000-byte limit)",
    )
    ip_daily_bytes: int = Field(1_000_000_000, ge=1, description="image bytes per client origin per UTC day")
    origin_ipv4_prefix: int = Field(32, ge=8, le=32, description="IPv4 prefix length of one client origin")
    origin_ipv6_prefix: int = Field(64, ge=16, le=128, description="IPv6 prefix length of one client origin")
    voice_ipv4_prefix: int = Field(
        24, ge=8, le=32, description="IPv4 prefix whose installs share one voice per item in consensus"
    )
    voice_ipv6_prefix: int = Field(
        64, ge=16, le=128, description="IPv6 prefix whose installs share one voice per item in consensus"
    )
    origin_secret: SecretStr | None = Field(
        None,
        description="key of the hash quotas count origins under (at least 32 characters, the same on every "
        "replica); unset: a random key per start, so origin quotas restart with the service",
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="comma-separated peers whose X-Forwarded-For is believed, e.g. 10.0.0.0/8,127.0.0.1",
    )
    trusted_proxy_hops: int | None = Field(
        None,
        ge=1,
        le=16,
        description="how many proxies in front of ingest append to X-Forwarded-For (the client is that many "
        "hops from the right); unset: the right-most hop not in WARP_TRUSTED_PROXIES",
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
        2, ge=1, le=64, description="threads per HTTP worker that check crops' images, off the event loop"
    )
    inline_crop_checks: int = Field(
        2,
        ge=0,
        le=50,
        description="requests with at most this many crops are checked on the event loop (a crop decodes in "
        "well under a millisecond; the hop to a check thread costs more); larger ones go to the check threads",
    )
    image_check_queue: int = Field(
        64, ge=0, le=10_000, description="requests queued per HTTP worker for crop checks; beyond: 503"
    )
    screenshot_check_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="threads per HTTP worker that check screenshots (their own lane, apart from crops)",
    )
    screenshot_check_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="how many nice steps below the event loop the screenshot-check threads run (Linux), so "
        "that decoding screenshots never takes the CPU that contribution requests need",
    )
    screenshot_check_queue: int = Field(
        4, ge=0, le=10_000, description="requests queued per HTTP worker for screenshot checks; beyond: 503"
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
    spent_answer_delay_seconds: float = Field(
        1.0,
        ge=0,
        le=30,
        description="how long the 429 of a spent reject budget is held back, so a client sending in a loop "
        "gets one answer a second per connection",
    )
    max_bytes_in_flight: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="request body bytes an HTTP worker holds at once (declared or received); more: 503 "
        "with Retry-After. Keep it above the largest route's body limit (100 MiB)",
    )
    body_read_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="a request body not fully received this long after its start (plus its declared length at "
        "WARP_BODY_MIN_BYTES_PER_SECOND): 408",
    )
    body_min_bytes_per_second: int = Field(
        131_072,
        ge=1024,
        description="the slowest upload a declared body length is given time for (128 KiB/s: twenty "
        "screenshots over a 1 Mbit/s uplink), on top of WARP_BODY_READ_TIMEOUT_SECONDS",
    )

    @field_validator("admin_key", "origin_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        minimum, otherwise = _SECRET_MINIMUM[info.field_name]
        if value is not None and len(value.get_secret_value()) < minimum:
            raise ValueError(f"must be at least {minimum} characters ({otherwise})")
        return value

    @field_validator("trusted_proxy_hops")
    @classmethod
    def _hops_need_a_trusted_proxy(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("trusted_proxies"):
            raise ValueError(
                "is set but WARP_TRUSTED_PROXIES is empty: X-Forwarded-For is only read from a trusted proxy"
            )
        return value

    def quota(self) -> Quota:
        return Quota(
            per_install=self.install_daily_limit,
            per_ip=self.ip_daily_limit,
            install_bytes=self.install_daily_bytes,
            ip_bytes=self.ip_daily_bytes,
        )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]
        return value

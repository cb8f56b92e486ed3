from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from shared.settings import CommonSettings


class PublisherSettings(CommonSettings):
    hf_endpoint: str = Field("https://huggingface.co", description="Hugging Face Hub URL")
    hf_token: SecretStr | None = Field(
        None, description="Hub write token, read at start; unset: releases go to WARP_LOCAL_HUB_DIR"
    )
    hf_repo_id: str = Field(
        "warp-community/warp-knowledge",
        pattern=r"^[\w.-]+/[\w.-]+$",
        description="Hub dataset repository (owner/name; created if missing), also the local hub's subdirectory",
    )
    local_hub_dir: Path = Field(Path("var/hub"), description="Hub-shaped directory used when no token is set")
    max_retries: int = Field(
        8,
        ge=0,
        le=50,
        description="retries of a Hub call on 409/412/429/5xx or a network error, with backoff",
    )
    health_port: int = Field(
        8083, ge=0, le=65535, description="port of GET /health and /metrics; 0 disables both"
    )

    @field_validator("hf_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

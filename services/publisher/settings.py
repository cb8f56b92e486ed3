from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from shared.settings import CommonSettings


class PublisherSettings(CommonSettings):
    hf_endpoint: str = Field("https://huggingface.co", description="Hub URL (a test Hub in tests)")
    hf_token: SecretStr | None = Field(
        None, description="write token; without it releases go to local_hub_dir"
    )
    hf_repo_id: str = Field("warp-community/warp-knowledge", pattern=r"^[\w.-]+/[\w.-]+$")
    local_hub_dir: Path = Field(Path("var/hub"), description="Hub-shaped directory used when no token is set")
    max_retries: int = Field(8, ge=0, le=50, description="Hub retries on 429/5xx/stale parent, with backoff")
    health_port: int = Field(8083, ge=0, le=65535, description="GET /health; 0 disables it")

    @field_validator("hf_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import CommonSettings


class TrainerSettings(CommonSettings):
    budget_minutes: float = Field(50.0, gt=0, le=24 * 60, description="wall-clock budget of a whole run")
    torch_threads: int = Field(2, ge=1, le=64, description="CPU threads PyTorch uses for a training")
    quality_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="held-out accuracy a new model may lose against the published one and still be published",
    )
    gold_class_margin: float = Field(
        0.2,
        ge=0,
        le=1,
        description="gold-set accuracy one class may lose against the published model and still be published",
    )
    gold_known_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="gold-set accuracy the candidate may lose on the classes the published model knows too (a "
        "release that adds classes must not pay for them with the old ones)",
    )
    gold_min_class_examples: int = Field(
        3, ge=1, description="gold crops a class needs before the per-class rule judges it"
    )
    checkpoint_seconds: float = Field(60.0, gt=0, description="how often a running training is checkpointed")
    health_port: int = Field(
        8082, ge=0, le=65535, description="port of GET /health and /metrics; 0 disables both"
    )
    initial_weights: Literal["imagenet"] | Path | None = Field(
        None,
        description="what the icon model starts from when nothing was published yet: a local state dict, or "
        "imagenet (torchvision's weights, fetched when reachable; from scratch, with a log line, when not)",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where models train: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N",
    )

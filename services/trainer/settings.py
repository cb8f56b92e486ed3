from pathlib import Path

from pydantic import Field

from shared.settings import CommonSettings


class TrainerSettings(CommonSettings):
    budget_minutes: float = Field(50.0, gt=0, le=24 * 60, description="wall-clock budget of a whole run")
    torch_threads: int = Field(2, ge=1, le=64)
    initial_weights: Path | None = Field(
        None, description="local state dict to start the icon model from when nothing was published yet"
    )

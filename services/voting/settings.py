from pydantic import Field

from shared.settings import CommonSettings


class VotingSettings(CommonSettings):
    prefetch: int = Field(200, ge=1, le=5000, description="contribution events processed concurrently")
    training_threshold: int = Field(
        10, ge=1, description="new or changed icon labels that trigger a training"
    )
    training_debounce_seconds: float = Field(30.0, ge=0, description="quiet time before a threshold snapshot")
    anchor_min_contributors: int = Field(3, ge=1)

from datetime import timedelta

from pydantic import Field

from services.voting.domain.snapshots import SnapshotRules
from shared.settings import CommonSettings


class VotingSettings(CommonSettings):
    prefetch: int = Field(
        1000, ge=1, le=10000, description="unacknowledged events a voting process holds at once"
    )
    training_threshold: int = Field(
        10, ge=1, description="new or changed icon labels that trigger a training"
    )
    screen_training_threshold: int = Field(
        20, ge=1, description="new or relabelled screen-type screenshots that trigger a training"
    )
    training_debounce_seconds: float = Field(
        30.0,
        ge=0,
        description="no new contribution for this long before a threshold snapshot (unless changes reach 10x the threshold)",
    )
    training_wait_hours: float = Field(
        3.0, gt=0, description="a snapshot no trainer took up within this long stops blocking the next one"
    )
    refresh_seconds: float = Field(
        2.0, gt=0, description="how often consensus is recomputed when votes changed"
    )
    min_posterior: float = Field(
        0.95, gt=0, le=1, description="icon label acceptance: posterior of the winner"
    )
    min_support: int = Field(
        2, ge=1, description="icon label acceptance: independent voters behind the winner"
    )
    anchor_min_contributors: int = Field(
        3, ge=1, description="layout anchor grids a (build type, aspect) group needs before it is published"
    )
    max_batch: int = Field(500, ge=1, le=5000, description="contributions stored per transaction")
    health_port: int = Field(
        8081, ge=0, le=65535, description="port of GET /health and /metrics; 0 disables both"
    )

    def snapshot_rules(self) -> SnapshotRules:
        return SnapshotRules(
            icon_threshold=self.training_threshold,
            screen_threshold=self.screen_training_threshold,
            debounce=timedelta(seconds=self.training_debounce_seconds),
            training_wait=timedelta(hours=self.training_wait_hours),
        )

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

ITEM_KINDS = "('icon', 'knowledge', 'screen', 'ocr', 'anchor')"

# Every accepted contribution, keyed by its message id: storing it is what makes a redelivery a no-op.
contributions = Table(
    "contributions",
    metadata,
    Column("contribution_id", String(128), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("install_id", String(64), nullable=False),
    Column("item_kind", String(16), nullable=False),
    Column("item_key", Text, nullable=False),
    Column("image_sha256", String(64), ForeignKey("blobs.sha256")),
    Column("payload", JSONB, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    Index("ix_contributions_install", "install_id"),
    Index("ix_contributions_received_at", "received_at"),  # the debounce's "latest arrival"
)

# One install, one vote per item: the primary key enforces it; a later vote replaces the row.
votes = Table(
    "votes",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("install_id", String(64), primary_key=True),
    Column("label", Text),
    Column("value", JSONB),
    Column("contribution_id", String(128), ForeignKey("contributions.contribution_id"), nullable=False),
    Column("voted_at", DateTime(timezone=True), nullable=False),
    # Arrival order of the vote's current value (taken again when an install changes its vote).
    Column("seq", BigInteger, nullable=False, server_default=text("nextval('vote_seq')")),
    # the client's network origin (ingest's keyed hash); NULL for votes from before origins were recorded
    Column("origin", String(64)),
    # what the client's own model said of the item, when the contribution tells
    Column("model_guess", Text),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    CheckConstraint("label IS NOT NULL OR value IS NOT NULL", name="label_or_value"),
    Index("ix_votes_install", "install_id"),
    Index("ix_votes_seq", "seq"),
    Index("ix_votes_kind_label", "item_kind", "label"),
)

# Items whose votes changed since the last refresh: the refresh takes them, so it costs what changed. Each
# change gives the row a new version; a refresh removes, when it commits, only the versions it read.
dirty_items = Table(
    "dirty_items",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("version", BigInteger, nullable=False, server_default=text("nextval('dirty_item_version')")),
    Index("ix_dirty_items_version", "version"),  # oldest change first
)

# The image an item is given to training and to the published model: its first stored crop (or screenshot).
item_images = Table(
    "item_images",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("image_sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
)

# An icon crop's perceptual hash, in four 16-bit bands: near-copies share a band (the family look-up).
icon_phashes = Table(
    "icon_phashes",
    metadata,
    Column("item_key", Text, primary_key=True),
    Column("phash", BigInteger, nullable=False),
    Column("band0", Integer, nullable=False),
    Column("band1", Integer, nullable=False),
    Column("band2", Integer, nullable=False),
    Column("band3", Integer, nullable=False),
    # each band index holds the pHash too: the family look-up filters candidates by distance from the index alone
    Index("ix_icon_phashes_band0_phash", "band0", "phash"),
    Index("ix_icon_phashes_band1_phash", "band1", "phash"),
    Index("ix_icon_phashes_band2_phash", "band2", "phash"),
    Index("ix_icon_phashes_band3_phash", "band3", "phash"),
    Index("ix_icon_phashes_phash", "phash"),
)

# Trust's evidence: each install's vote on an item that was already settled when it voted (or that a moderator
# decided), judged against that label once per (item, install), updated if the install changes its vote.
trust_judgements = Table(
    "trust_judgements",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("install_id", String(64), primary_key=True),
    Column("label", Text, nullable=False),
    Column("settled_label", Text, nullable=False),
    Column("agree", Boolean, nullable=False),
    Column("gold", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_trust_judgements_install", "install_id"),
)

# Each install's trust as last estimated: its judgements, its weight, its cohort and whether it is banned.
install_trust = Table(
    "install_trust",
    metadata,
    Column("install_id", String(64), primary_key=True),
    Column("agree", Integer, nullable=False, server_default=text("0")),
    Column("disagree", Integer, nullable=False, server_default=text("0")),
    Column("gold_agree", Integer, nullable=False, server_default=text("0")),
    Column("gold_disagree", Integer, nullable=False, server_default=text("0")),
    Column("weight", Float, nullable=False),
    Column("cohort", String(64)),  # the cohort's first member: its installs speak with one voice
    Column("banned", Boolean, nullable=False, server_default=text("false")),
    # judgements changed since the weight was estimated: the next estimation takes it up
    Column("stale", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_install_trust_stale", "stale", postgresql_where=text("stale")),
)

# Labels a fresh vote may be accepted for: those the published model has, those accepted on some item with
# enough trusted origins, and those a moderator gave. A label not here needs more (domain.evidence).
known_labels = Table(
    "known_labels",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("label", Text, primary_key=True),
    Column("source", String(16), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("source IN ('published', 'accepted', 'moderator')", name="known_source"),
)

# Moderators' decisions (gold), as received: the latest per item stands; the log keeps before and after.
moderator_decisions = Table(
    "moderator_decisions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False, unique=True),
    Column("item_kind", String(16), nullable=False),
    Column("item_key", Text, nullable=False),
    Column("label", Text),
    Column("moderator", String(64), nullable=False),
    Column("note", Text, nullable=False, server_default=text("''")),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("before", JSONB),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    Index("ix_moderator_decisions_item", "item_kind", "item_key", "decided_at"),
)

# Shadow bans: a banned install's votes stop counting; its client is answered as before.
install_bans = Table(
    "install_bans",
    metadata,
    Column("install_id", String(64), primary_key=True),
    Column("shadow_banned", Boolean, nullable=False),
    Column("moderator", String(64), nullable=False),
    Column("note", Text, nullable=False, server_default=text("''")),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

consensus = Table(
    "consensus",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("label", Text),
    Column("value", JSONB),
    Column("status", String(16), nullable=False),
    Column("support", Integer, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # why it is accepted or withheld, and the evidence behind it (voters, voices, model, family, gold)
    Column("reason", Text),
    Column("evidence", JSONB),
    # the newest vote the item's accepted label was decided on: later votes are judged against it (trust)
    Column("settled_seq", BigInteger),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    CheckConstraint("status IN ('accepted', 'withheld')", name="known_status"),
    CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
    Index("ix_consensus_updated_at", "updated_at"),
)

# The published model's prediction on an item (the trainer's ``model.predicted``), and voting's request for it:
# a row exists once voting asked; the prediction fills it in. Evidence only from a model that did not train on it.
model_predictions = Table(
    "model_predictions",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("requested_version", String(64)),
    Column("requested_at", DateTime(timezone=True)),
    Column("model_version", String(64)),
    Column("label", Text),
    Column("confidence", Float),
    Column("trained_on", Boolean),
    Column("predicted_at", DateTime(timezone=True)),
    # the latest prediction from a version that had not trained on the item: its evidence once one has
    Column("independent_version", String(64)),
    Column("independent_label", Text),
    Column("independent_confidence", Float),
    CheckConstraint("item_kind IN ('icon', 'knowledge', 'screen')", name="predicted_kind"),
    CheckConstraint("confidence IS NULL OR (confidence >= 0 AND confidence <= 1)", name="confidence_range"),
)

# Immutable once written (enforced by triggers in the migration): what exactly a training run learned from.
training_snapshots = Table(
    "training_snapshots",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("parent_id", Uuid, ForeignKey("training_snapshots.id")),
    Column("reason", String(16), nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("new_label_count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint("reason IN ('threshold', 'admin')", name="known_reason"),
)

snapshot_items = Table(
    "snapshot_items",
    metadata,
    Column("snapshot_id", Uuid, ForeignKey("training_snapshots.id"), primary_key=True),
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("label", Text),
    Column("value", JSONB),
    Column("image_sha256", String(64), ForeignKey("blobs.sha256")),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
)

IMMUTABLE_TABLES = ("training_snapshots", "snapshot_items")

# One row per consensus refresh: up to which vote it saw, and what it decided.
consensus_refreshes = Table(
    "consensus_refreshes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("last_vote_seq", BigInteger, nullable=False),
    Column("stats", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

"""incremental feature snapshots: per-update deltas on a base, a token per write

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feature_snapshot_deltas",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("base_version_id", sa.Integer(), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_feature_snapshot_deltas")),
    )
    with op.batch_alter_table("feature_snapshot_deltas", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_feature_snapshot_deltas_base_version_id"),
            ["base_version_id"],
            unique=False,
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE feature_snapshot_deltas ALTER COLUMN data SET STORAGE EXTERNAL")
    with op.batch_alter_table("feature_snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feature_snapshots", schema=None) as batch_op:
        batch_op.drop_column("token")
    with op.batch_alter_table("feature_snapshot_deltas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feature_snapshot_deltas_base_version_id"))
    op.drop_table("feature_snapshot_deltas")

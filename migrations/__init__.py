"""Alembic migrations of the Shoal store (applied automatically on first use)."""

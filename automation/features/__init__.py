"""Per-user features: running aggregates kept at ingest, features as of a time, scaling."""

"""Events in: readers (CSV, JSON lines, Parquet), column mapping and presets, validation, bulk load."""

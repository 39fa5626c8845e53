"""The store: engine and migrations, bulk writes, segmentation history."""

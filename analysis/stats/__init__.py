"""Statistics: pure functions over numbers and typed snapshots (no I/O)."""

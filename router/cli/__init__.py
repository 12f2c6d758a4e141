"""The `abgate` command: one module per command group."""

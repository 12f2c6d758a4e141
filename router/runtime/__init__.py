"""One gateway process: the `Gateway` object and its background services."""

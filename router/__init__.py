"""abgate's gateway: the composition root (settings, app factory, proxy, store, CLI)."""

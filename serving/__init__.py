"""Everything that talks to a model server, including the vLLM-compatible emulator."""

"""Outcome signals: request events, feedback, captures into Redis, and the read model back."""

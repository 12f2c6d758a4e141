"""Batch tools outside the gateway: the offline eval runner and atomic file output."""

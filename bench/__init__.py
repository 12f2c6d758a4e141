"""Benchmarks of the gateway's request path (see bench/README.md)."""

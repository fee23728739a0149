"""Benchmark workloads and clients."""

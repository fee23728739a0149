"""Benchmarks run by `make bench`: tokenyard side by side with baselines measured in the same run."""

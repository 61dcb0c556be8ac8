"""Datasets: reading, checking, converting, simulating partial labels and merging."""

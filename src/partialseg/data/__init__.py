"""Datasets: reading, synthesising, simulating partial labels, merging and preprocessing."""

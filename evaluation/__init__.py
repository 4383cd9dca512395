"""Evaluation: throughput (and, later, drift metrics and reports) over the streaming generator."""

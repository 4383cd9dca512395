"""Evaluation: throughput, long-horizon drift metrics and ground-truth checks over the streaming generator."""

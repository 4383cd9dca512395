"""The streaming generator: schedules, windows, RoPE, KV cache, Wan networks and samplers.

Imports nothing else of ours (see tests/unit/test_imports.py).
"""

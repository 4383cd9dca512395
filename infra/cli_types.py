"""argparse types for numeric flags: a value out of range is refused by argparse with the flag's name.

    rollforge generate --seconds -5   ->   rollforge generate: error: argument --seconds: must be > 0, got -5
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, lowest: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, finite, and > lowest (>= lowest when `inclusive`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if value < lowest or (value == lowest and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {lowest:g}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {'>=' if inclusive else '>'} {lowest:g}"  # argparse names it in errors
    return parse


positive_int = _number(int, 0, inclusive=False)
nonneg_int = _number(int, 0, inclusive=True)
positive_float = _number(float, 0, inclusive=False)

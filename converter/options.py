"""Click option types every command shares: numbers that must be finite and in range.

``click.FloatRange`` lets ``nan`` through (every comparison with NaN is false) and ``inf`` too,
so a tolerance of ``nan`` turned every check into a failure (exit 1) instead of a usage error.
``FiniteFloat`` refuses both as bad input (exit 2) with the option named, like any click error.
"""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = ["FiniteFloat", "TOLERANCE"]


class FiniteFloat(click.ParamType):
    """A finite float above ``minimum`` (``above``: strictly) and at most ``maximum`` when given."""

    name = "float"

    def __init__(self, minimum: float | None = None, above: bool = False, maximum: float | None = None) -> None:
        self.minimum, self.above, self.maximum = minimum, above, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low = self.minimum
        if low is not None and (number <= low if self.above else number < low):
            self.fail(f"{value!r} is not {'above' if self.above else 'at least'} {low:g}", param, ctx)
        if self.maximum is not None and number > self.maximum:
            self.fail(f"{value!r} is above {self.maximum:g}", param, ctx)
        return number


#: a tolerance: finite and at least 0 (0 asks for exact agreement)
TOLERANCE = FiniteFloat(0.0)

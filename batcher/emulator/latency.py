"""Generation latency: how long a task stays unfinished, drawn per task from a distribution."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

LatencyKind = Literal["fixed", "uniform", "lognormal"]


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency distribution in seconds; parse one from ``fixed:S``, ``uniform:LO:HI`` or
    ``lognormal:MEDIAN:SIGMA``."""

    kind: LatencyKind = "fixed"
    a: float = 0.0  # fixed: seconds; uniform: low bound; lognormal: median seconds
    b: float = 0.0  # uniform: high bound; lognormal: sigma of the underlying normal

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a < 0 or self.b < 0:
            raise ValueError(f"latency {self} needs finite, non-negative numbers")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"latency {self}: high bound is below the low bound")
        if self.kind == "lognormal" and self.a <= 0:
            raise ValueError(f"latency {self}: the median must be positive")

    @classmethod
    def parse(cls, spec: str) -> Latency:
        """``fixed:0.2``, ``uniform:0.5:2``, ``lognormal:1.5:0.4``; a bare number means fixed."""
        parts = spec.strip().split(":")
        try:
            numbers = [float(p) for p in parts[1:]] if len(parts) > 1 else [float(parts[0])]
        except ValueError:
            raise ValueError(f"latency {spec!r}: not a number") from None
        kind = parts[0] if len(parts) > 1 else "fixed"
        arity = {"fixed": 1, "uniform": 2, "lognormal": 2}
        if kind not in arity:
            raise ValueError(f"latency {spec!r}: kind must be fixed, uniform or lognormal")
        if len(numbers) != arity[kind]:
            raise ValueError(f"latency {spec!r}: {kind} takes {arity[kind]} number(s)")
        if kind == "fixed":
            return cls("fixed", numbers[0])
        return cls("uniform" if kind == "uniform" else "lognormal", numbers[0], numbers[1])

    def sample(self, rng: random.Random) -> float:
        """One draw, in seconds. Fixed latency consumes no randomness."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return rng.lognormvariate(math.log(self.a), self.b)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g}:{self.b:g}"

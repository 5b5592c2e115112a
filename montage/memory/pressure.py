"""Turn one memory sample into a pressure level: numbers in, level out, no I/O.

Kept pure so the policy can be tested exhaustively (hypothesis) without a machine, and so the
monitor, the budget and the ffmpeg manager all agree on what "HIGH" means.

The levels follow the spec: LOW < 70 % <= MODERATE < 80 % <= HIGH < 90 % <= CRITICAL of the
ceiling. Hysteresis keeps callbacks from flapping: a level is entered as soon as its threshold is
reached, but left only once usage falls ``hysteresis_pct`` points below that threshold. Two
absolute signals override percentages, because percentages alone miss real trouble: PSI ``full``
avg10 (the share of time every task stalled on memory) escalates to at least HIGH, and having
less than ``min_available_mb`` left is CRITICAL whatever the ratio says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from montage.errors import ConfigError

__all__ = [
    "MemoryPressureLevel",
    "PressureThresholds",
    "classify",
    "effective_percent",
]


class MemoryPressureLevel(str, Enum):
    """How close we are to the ceiling; ``.value`` is what the spec prints.

    It is a ``str`` enum (so ``level == "high"`` and JSON work), but ordering compares the
    severity rank, not the strings ("critical" < "high" alphabetically, which would be wrong);
    ``level >= "high"`` works too, ordering against any other string raises ``TypeError``.
    """

    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for LOW up to 3 for CRITICAL."""
        return _RANKS[self.value]

    @classmethod
    def from_rank(cls, rank: int) -> MemoryPressureLevel:
        """The level with this rank (clamped to 0..3)."""
        return _LEVELS_BY_RANK[max(0, min(rank, len(_LEVELS_BY_RANK) - 1))]

    def __lt__(self, other: str) -> bool:
        return self.rank < _rank_of(other)

    def __le__(self, other: str) -> bool:
        return self.rank <= _rank_of(other)

    def __gt__(self, other: str) -> bool:
        return self.rank > _rank_of(other)

    def __ge__(self, other: str) -> bool:
        return self.rank >= _rank_of(other)

    def __str__(self) -> str:
        return self.value


_RANKS = {"low": 0, "moderate": 1, "high": 2, "critical": 3}


def _rank_of(other: object) -> int:
    """Rank of a level or of its string value ("high"); anything else cannot be ordered.

    Raising (rather than NotImplemented) matters: Python would otherwise fall back to plain
    string comparison, where "critical" < "high".
    """
    rank = _RANKS.get(other) if isinstance(other, str) else None
    if rank is None:
        raise TypeError(f"cannot order a MemoryPressureLevel against {other!r}")
    return rank


_LEVELS_BY_RANK = (
    MemoryPressureLevel.LOW,
    MemoryPressureLevel.MODERATE,
    MemoryPressureLevel.HIGH,
    MemoryPressureLevel.CRITICAL,
)


@dataclass(frozen=True)
class PressureThresholds:
    """Where the levels start, in percent of the ceiling, plus the absolute overrides.

    Validated on construction (``ConfigError``), so a bad setting fails where it is made,
    not later inside the sampling thread.
    """

    moderate_pct: float = 70.0
    high_pct: float = 80.0
    critical_pct: float = 90.0
    hysteresis_pct: float = 5.0
    psi_full_high_pct: float = 10.0
    min_available_mb: float = 256.0

    def __post_init__(self) -> None:
        for name in (
            "moderate_pct",
            "high_pct",
            "critical_pct",
            "hysteresis_pct",
            "psi_full_high_pct",
            "min_available_mb",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"pressure threshold {name}={value!r} is not a number")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"pressure threshold {name}={value!r} must be finite and >= 0")
        if not 0 < self.moderate_pct < self.high_pct < self.critical_pct <= 100:
            raise ConfigError(
                "pressure thresholds must satisfy 0 < moderate < high < critical <= 100, got "
                f"moderate_pct={self.moderate_pct}, high_pct={self.high_pct}, "
                f"critical_pct={self.critical_pct}"
            )
        if self.hysteresis_pct >= self.moderate_pct:
            raise ConfigError(
                f"hysteresis_pct={self.hysteresis_pct} must be below moderate_pct="
                f"{self.moderate_pct}, or MODERATE could never be left"
            )
        if self.psi_full_high_pct > 100:
            raise ConfigError(f"psi_full_high_pct={self.psi_full_high_pct} must be <= 100")

    def entry_pct(self, level: MemoryPressureLevel) -> float:
        """The percent at which ``level`` is entered (0 for LOW)."""
        return (0.0, self.moderate_pct, self.high_pct, self.critical_pct)[level.rank]


def _level_from_percent(percent: float, thresholds: PressureThresholds) -> MemoryPressureLevel:
    """The level a fresh sample deserves, ignoring history."""
    level = MemoryPressureLevel.LOW
    for candidate in _LEVELS_BY_RANK[1:]:
        if percent >= thresholds.entry_pct(candidate):
            level = candidate
    return level


def _sticky_level(
    percent: float, previous: MemoryPressureLevel, thresholds: PressureThresholds
) -> MemoryPressureLevel:
    """The highest level at or below ``previous`` that ``percent`` has not yet fallen out of.

    Leaving level L needs ``percent < entry(L) - hysteresis``; after leaving L we are in L-1,
    which is left under the same rule, so a big drop can pass several levels at once.
    """
    for rank in range(previous.rank, 0, -1):
        level = _LEVELS_BY_RANK[rank]
        if percent >= thresholds.entry_pct(level) - thresholds.hysteresis_pct:
            return level
    return MemoryPressureLevel.LOW


def classify(
    percent_used: float,
    *,
    available_mb: float | None = None,
    psi_full_avg10: float | None = None,
    previous: MemoryPressureLevel | None = None,
    thresholds: PressureThresholds = PressureThresholds(),
) -> MemoryPressureLevel:
    """The pressure level for one sample, given the level the previous sample produced.

    ``previous=None`` means no history (first sample): no hysteresis is applied.
    """
    if math.isnan(percent_used):
        raise ValueError("percent_used is NaN")
    level = _level_from_percent(percent_used, thresholds)
    if previous is not None:
        level = max(level, _sticky_level(percent_used, previous, thresholds))
    if psi_full_avg10 is not None and psi_full_avg10 >= thresholds.psi_full_high_pct:
        level = max(level, MemoryPressureLevel.HIGH)
    if available_mb is not None and available_mb < thresholds.min_available_mb:
        level = MemoryPressureLevel.CRITICAL
    return level


def effective_percent(
    system_used_bytes: int,
    ceiling_bytes: int,
    tree_bytes: int | None = None,
    budget_bytes: int | None = None,
) -> float:
    """Percent used: the worse of the machine (used / ceiling) and our own tree (tree / budget).

    A configured budget bounds what *we* may use even when the machine has room, so our tree
    against it counts as pressure too. Not clamped: above 100 means over the ceiling.
    """
    if ceiling_bytes <= 0:
        raise ValueError(f"ceiling_bytes must be > 0, got {ceiling_bytes}")
    percent = 100.0 * max(system_used_bytes, 0) / ceiling_bytes
    if tree_bytes is not None and budget_bytes is not None and budget_bytes > 0:
        percent = max(percent, 100.0 * max(tree_bytes, 0) / budget_bytes)
    return percent

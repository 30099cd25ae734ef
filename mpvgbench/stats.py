"""Paired differences between two methods over the same seeds, with their confidence.

A method and the baseline trained with the same seed share the data order, the initialisation
of every layer they have in common and the augmentation draws, so the per-seed difference
``d_s = method_s - baseline_s`` removes much of the seed noise that the two means carry. For the
seeds both have, :func:`paired_difference` gives the mean of ``d``, its two-sided 95% interval
from Student's t distribution (``mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)``) and the p-value
of the paired t-test (``scipy.stats.ttest_rel``; H0: the mean difference is 0). The interval
needs two seeds; with one it is left out and only the difference is given.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

TEST_NAME = "paired t-test"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedPair:
    """One seed's value for the method and for the baseline."""

    seed: int
    value: float
    baseline: float

    @property
    def diff(self) -> float:
        return self.value - self.baseline


@dataclass(frozen=True)
class PairedDifference:
    """``mean(method - baseline)`` over the paired seeds; interval and p-value when n >= 2."""

    pairs: tuple[SeedPair, ...]
    mean: float
    low: Optional[float] = None
    high: Optional[float] = None
    p_value: Optional[float] = None
    confidence: float = CONFIDENCE

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at this confidence)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {"diff": self.mean, "ci_low": self.low, "ci_high": self.high, "p": self.p_value,
                "n": self.n, "confidence": self.confidence, "test": TEST_NAME,
                "excludes_zero": self.significant,
                "per_seed": [{"seed": p.seed, "value": p.value, "baseline": p.baseline, "diff": p.diff}
                             for p in self.pairs]}


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Optional[PairedDifference]:
    """The paired difference over the seeds in both mappings (``{seed: value}``); None when
    they share no seed. Identical differences (sd 0) give a zero-width interval and no p-value
    (the t statistic is undefined)."""
    pairs = tuple(SeedPair(s, float(values[s]), float(baseline[s])) for s in sorted(set(values) & set(baseline)))
    if not pairs:
        return None
    diffs = [p.diff for p in pairs]
    mean = statistics.fmean(diffs)
    if len(pairs) < 2:
        return PairedDifference(pairs, mean, confidence=confidence)
    from scipy import stats  # here: a report without two paired seeds never pays its import

    half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    p_value: Optional[float] = None
    if half > 0:
        p_value = float(stats.ttest_rel([p.value for p in pairs], [p.baseline for p in pairs]).pvalue)
    return PairedDifference(pairs, mean, mean - half, mean + half, p_value, confidence)


__all__ = ["CONFIDENCE", "PairedDifference", "SeedPair", "TEST_NAME", "paired_difference"]

"""Ratios with their targets, as every benchmark measures them and ``make bench`` keeps them.

A benchmark measures a ratio side by side: pairs taken alternately (ours, then the baseline, or the
order rotated between rounds) on the same machine. :func:`record` takes the per-pair ratios and keeps
their median and spread, so a noisy machine shows as a wide spread, not as a false PASS or FAIL.
Run alone, a benchmark prints its own table; under ``benchmarks/bench.py`` (``make bench``) its
records also go, one JSON line each, to the file named by ``$LINNAEUS_BENCH_RESULTS``, and bench.py
prints them as one table, writes ``benchmarks/results/<date>.json`` and draws the chart.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass

RESULTS_ENV = "LINNAEUS_BENCH_RESULTS"


@dataclass(frozen=True)
class Ratio:
    benchmark: str
    measure: str
    value: float  # the median of the per-pair ratios
    low: float
    high: float
    pairs: int
    target: str  # ">= 0.95", "<= 1.2"; empty: reported, no target
    unit: str = "x"  # "x" (a ratio) or "%" (a share)

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        op, bound = self.target.split()
        ok = self.value >= float(bound) if op == ">=" else self.value <= float(bound)
        return "PASS" if ok else "FAIL"

    @property
    def headroom(self) -> float:
        """How far the value is on the good side of its target (>= 1: met), for the chart."""
        op, bound = self.target.split()
        if op == ">=":
            return self.value / float(bound)
        return float(bound) / self.value if self.value > 0 else float("inf")

    def row(self) -> str:
        fmt = (lambda v: f"{v:.1f}%") if self.unit == "%" else (lambda v: f"{v:.3f}x")
        return (f"{self.benchmark:<20} {self.measure:<58} {fmt(self.value):>8}  {fmt(self.low)}-{fmt(self.high):<9}"
                f" n={self.pairs:<3} {self.target:<8} {self.verdict}")


def record(benchmark: str, measure: str, per_pair: list[float], target: str = "", unit: str = "x") -> Ratio:
    """The median and spread of ``per_pair`` (one ratio per interleaved pair), kept for ``make bench``."""
    ratio = Ratio(benchmark, measure, statistics.median(per_pair), min(per_pair), max(per_pair), len(per_pair),
                  target, unit)
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(asdict(ratio)) + "\n")
    return ratio


def read(path: str) -> list[Ratio]:
    with open(path) as f:
        return [Ratio(**json.loads(line)) for line in f if line.strip()]


HEADER = f"{'benchmark':<20} {'measure':<58} {'median':>8}  {'spread':<19} {'pairs':<5} {'target':<8} verdict"

"""The timing loop every benchmark shares: interleaved rounds, medians, and the spread that shows the noise.

On a shared machine the load drifts while a benchmark runs. Timing each task once per round, every round
in the same order, puts the tasks under the same drift; the median of the rounds discards the worst bursts;
and a ratio is read from the same rounds (round r of A over round r of B), so its spread across rounds says
how much of it is noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Times:
    """Seconds per round of each task (same rounds, same order), and what each task returned last."""

    seconds: dict[str, list[float]]
    outputs: dict[str, object]

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def spread(self, name: str) -> float:
        """(max - min) / median over the rounds: 0 on a quiet machine."""
        values = self.seconds[name]
        return (max(values) - min(values)) / statistics.median(values)

    def ratio(self, name: str, reference: str) -> tuple[float, float, float]:
        """(median(name) / median(reference), least and greatest ratio of the same round)."""
        per_round = [a / b for a, b in zip(self.seconds[name], self.seconds[reference])]
        return self.median(name) / self.median(reference), min(per_round), max(per_round)

    def cell(self, name: str) -> str:
        """'median s (spread %)' for a table."""
        return f"{self.median(name):.3f} ({100 * self.spread(name):.0f}%)"

    def ratio_cell(self, name: str, reference: str) -> str:
        """'ratio [least, greatest]' for a table."""
        ratio, low, high = self.ratio(name, reference)
        return f"{ratio:.2f} [{low:.2f}, {high:.2f}]"


def interleaved(tasks: dict[str, Callable[[], object]], rounds: int, warmup: bool = True) -> Times:
    """Run every task once per round, in order, `rounds` times (after one untimed round if `warmup`)."""
    if warmup:
        for task in tasks.values():
            task()
    seconds, outputs = {name: [] for name in tasks}, {}
    for _ in range(rounds):
        for name, task in tasks.items():
            start = time.perf_counter()
            outputs[name] = task()
            seconds[name].append(time.perf_counter() - start)
    return Times(seconds, outputs)

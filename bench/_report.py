"""The benchmark's table: medians over rounds, ratios to HAProxy paired round by round."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["Figure", "Target", "check_targets", "format_table", "paired_ratio"]


@dataclass(frozen=True)
class Target:
    """A bound on the ratio data plane / HAProxy: `op` is ">=" or "<="."""

    op: str
    bound: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """One row: the key the figures are stored under, its title, its target if any."""

    key: str
    title: str
    target: Optional[Target] = None


def _median(values: Optional[Sequence[float]]) -> Optional[float]:
    return statistics.median(values) if values else None


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> Optional[float]:
    """The median of round-by-round ratios; the ratio of medians when rounds do not pair."""
    if not ours or not theirs:
        return None
    if len(ours) == len(theirs) and all(theirs):
        return statistics.median(a / b for a, b in zip(ours, theirs))
    return statistics.median(ours) / statistics.median(theirs) if statistics.median(theirs) \
        else None


def _number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(row: Figure, subjects, ours: str, theirs: str) -> Optional[float]:
    by_label = {subject.label: subject for subject in subjects}
    if ours not in by_label or theirs not in by_label:
        return None
    return paired_ratio(by_label[ours].figures.get(row.key, []),
                        by_label[theirs].figures.get(row.key, []))


def format_table(rows: Sequence[Figure], subjects, ours: str, theirs: str) -> str:
    """The table: one column per subject, the ratio ours/theirs, the target, whether met."""
    labels = [subject.label for subject in subjects]
    header = ["figure", *labels, f"{ours} / {theirs}", "target", "met"]
    lines = [header]
    for row in rows:
        ratio = _ratio(row, subjects, ours, theirs)
        met = "-" if row.target is None or ratio is None else \
            ("yes" if row.target.met(ratio) else "NO")
        lines.append([row.title,
                      *[_number(_median(subject.figures.get(row.key))) for subject in subjects],
                      _number(ratio), str(row.target or "-"), met])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = []
    for number, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width)
                                              for cell, width in zip(line[1:], widths[1:])]
        text.append("  ".join(cells))
        if number == 0:
            text.append("  ".join("-" * width for width in widths))
    return "\n".join(text)


def check_targets(rows: Sequence[Figure], subjects, ours: str, theirs: str) -> list[str]:
    """One line per targeted row: the ratio, the target and whether it is met."""
    verdicts = []
    for row in rows:
        if row.target is None:
            continue
        ratio = _ratio(row, subjects, ours, theirs)
        if ratio is None:
            verdicts.append(f"{row.title}: no {theirs} figure to compare with")
            continue
        state = "met" if row.target.met(ratio) else "NOT met"
        verdicts.append(f"{row.title}: {ours}/{theirs} = {ratio:.2f}, target {row.target}: "
                        f"{state}")
    return verdicts

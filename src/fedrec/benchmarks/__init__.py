"""Reproducible performance benchmarks (``fedrec bench NAME``), each returning a typed result."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from fedrec.shared.files import write_json


class BenchmarkReport:
    """What every benchmark result (a dataclass) shares: its targets, JSON, and target checks."""

    TARGETS: ClassVar[dict[str, tuple[str, float]]] = {}

    def to_json(self) -> dict[str, Any]:
        figures: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return {**figures, "targets": {name: list(t) for name, t in self.TARGETS.items()}}

    def write_json(self, path: Path | str) -> None:
        write_json(Path(path), self.to_json())

    def verdict(self, name: str, value: float) -> str:
        """``"   target <= 5: met"`` (or MISSED) for a figure with a target, else ``""``."""
        if name not in self.TARGETS:
            return ""
        op, bound = self.TARGETS[name]
        met = value <= bound if op == "<=" else value >= bound
        return f"   target {op} {bound:g}: {'met' if met else 'MISSED'}"

    def figure_lines(self, figures: tuple[tuple[str, str], ...]) -> list[str]:
        """One line per ``(name, format)`` in ``figures``: the name, the value formatted, and
        the verdict on its target, if it has one."""
        return [
            f"{name:<28}{fmt.format(getattr(self, name))}{self.verdict(name, getattr(self, name))}"
            for name, fmt in figures
        ]

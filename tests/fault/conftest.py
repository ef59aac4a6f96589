"""The fault suite's summary: what each scenario counted (requests, crashes, signatures...)."""

from __future__ import annotations

from typing import Any

from tests.fault.kit import FAULT_COUNTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault-suite counts per scenario and in total."""
    if not FAULT_COUNTS:
        return
    terminalreporter.section("fault suite")
    totals: dict[str, int] = {}
    for scenario in sorted(FAULT_COUNTS):
        counts = FAULT_COUNTS[scenario]
        shown = " ".join(f"{key}={value}" for key, value in sorted(counts.items()))
        terminalreporter.write_line(f"{scenario}: {shown}")
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    shown = " ".join(f"{key}={value}" for key, value in sorted(totals.items()))
    terminalreporter.write_line(f"total: {shown}")

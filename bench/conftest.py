"""Benchmark plumbing: each case records how many items one call decodes and whether
the output was right; the summary prints correctness beside speed and the peers'
figures (DESIGN.md section 8), and is saved to bench/results/codec-summary.md."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest

RESULTS: list[dict[str, Any]] = []
SUMMARY = Path(__file__).parent / "results" / "codec-summary.md"


@pytest.fixture
def record() -> Any:
    def _record(
        case: str, items: int, unit: str, correct: bool, benchmark: Any, *, peers: str = "-"
    ) -> None:
        benchmark.extra_info.update({"items_per_call": items, "unit": unit, "correct": correct})
        RESULTS.append(
            {
                "case": case,
                "items": items,
                "unit": unit,
                "correct": correct,
                "bench": benchmark,
                "peers": peers,
            }
        )

    return _record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    machine = f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})"
    lines = [
        f"Codec benchmarks on {machine}, one core (`make bench`): the batch API "
        "(`PushDecoder`, which tools use) and the server's own path (`Session.feed`, "
        "what workers run; its line is the figure to compare with the targets).",
        "",
        "| case | correct | items/call | median per call | items per second "
        "| peers on this kind of machine |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in RESULTS:
        stats = r["bench"].stats.stats
        per_call = stats.median
        rate = r["items"] / per_call if per_call else 0.0
        correct = "yes" if r["correct"] else "NO"
        lines.append(
            f"| {r['case']} | {correct} | {r['items']:,} | {per_call * 1e3:.2f} ms "
            f"| {rate:,.0f} {r['unit']}/s | {r['peers']} |"
        )
    text = "\n".join(lines) + "\n"
    terminalreporter.write_line("")
    for line in lines:
        terminalreporter.write_line(line)
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(text)

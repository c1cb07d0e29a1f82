"""The one table the suite prints: scenario, figure, bar, pass/fail; also written as JSON for the record."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class Row:
    scenario: str
    figure: str
    bar: str
    passed: bool | None  # None: not measured (the note says why)
    note: str = ""


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def render(rows: list[Row]) -> str:
    headers = ("scenario", "figure", "bar", "result")
    cells = [(r.scenario, r.figure, r.bar, verdict(r.passed)) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += [" | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    notes = [f"- {r.scenario}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    out = ["| scenario | figure | bar | result |", "|---|---|---|---|"]
    out += [f"| {r.scenario} | {r.figure} | {r.bar} | {verdict(r.passed)} |" for r in rows]
    return "\n".join(out)


def machine() -> dict[str, object]:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }


def save(rows: list[Row], directory: Path, extra: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"bench-{stamp}.json"
    document = {"at": stamp, "machine": machine(), **extra, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(document, indent=2))
    (directory / "latest.md").write_text(markdown(rows) + "\n")
    return path

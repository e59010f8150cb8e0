"""The benchmark protocol every side-by-side comparison in benchmarks/ uses.

    from protocol import interleave, write_results, markdown_table

    runs = interleave({"clipkit": run_ours, "open_clip_train": run_theirs}, rounds=3)
    # A B A B A B: each call returns a dict of measures (e.g. {"samples_per_s": 412.0})
    summary = runs.summary("samples_per_s")          # median, min, max, spread per contender
    ratio = runs.ratio("samples_per_s", "clipkit", "open_clip_train")   # per-round ratios, median + range
    write_results("train", {"summary": summary, "ratio": ratio}, markdown_table([...], rows))

Why interleave: on a 2-core machine whatever else runs lands on one side only when
each side runs once, one after the other (a 1.41x ratio measured 0.18x that way).
Alternating the contenders over several rounds spreads a disturbance over both, and
the median over rounds discards a window that was hit.

Why watch the CPU: every call is timed inside a `CpuWindow`, which reads the
machine's busy time from /proc/stat and our own (process + waited-for children)
CPU time from the kernel; the difference is what *other* processes took. A window
in which others took more than `max_foreign_cores` (default 0.25 of a core on
average) is marked `contended`; `interleave(..., strict=True)` stops with a message
naming the window instead. The load average cannot show this (it lags a minute and
counts our own work).

Results go to benchmarks/results/NAME.json (numbers, the command, machine, date and
commit) and NAME.md (the table the docs render; tests/test_docs.py
checks that every figure the README quotes is in the file it cites).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _machine_busy_seconds() -> float | None:
    """CPU-seconds all cores spent busy since boot (None where /proc/stat is absent)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class CpuWindow:
    """Wall time, our CPU time and the CPU other processes took during a `with` block."""

    max_foreign_cores: float = 0.25
    wall: float = 0.0
    own_cpu: float = 0.0
    foreign_cores: float | None = None

    def __enter__(self) -> CpuWindow:
        self._t, self._own, self._busy = time.perf_counter(), _own_cpu_seconds(), _machine_busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t
        self.own_cpu = _own_cpu_seconds() - self._own
        busy = _machine_busy_seconds()
        if busy is not None and self._busy is not None and self.wall > 0:
            # Children are counted when waited for; a run in threads or waited children is exact.
            self.foreign_cores = max(0.0, (busy - self._busy) - self.own_cpu) / self.wall

    @property
    def contended(self) -> bool:
        return self.foreign_cores is not None and self.foreign_cores > self.max_foreign_cores


@dataclass
class Interleaved:
    """Every call's measures, in the order they ran: [(contender, round, measures, window), ...]."""

    runs: list[tuple[str, int, dict, CpuWindow]] = field(default_factory=list)

    def values(self, key: str, name: str, clean_only: bool = True) -> list[float]:
        rows = [m[key] for n, _, m, w in self.runs if n == name and key in m and not (clean_only and w.contended)]
        if not rows and clean_only:  # every window was hit: report them, marked, rather than nothing
            return self.values(key, name, clean_only=False)
        return rows

    def contended_windows(self) -> list[dict]:
        return [
            {"contender": n, "round": r, "foreign_cores": round(w.foreign_cores or 0.0, 2)}
            for n, r, _, w in self.runs
            if w.contended
        ]

    def summary(self, key: str) -> dict[str, dict]:
        """Per contender: median, min, max, spread ((max - min) / median) and the number of clean rounds."""
        out = {}
        for name in dict.fromkeys(n for n, *_ in self.runs):
            values = self.values(key, name)
            if not values:
                continue
            median = statistics.median(values)
            out[name] = {
                "median": median,
                "min": min(values),
                "max": max(values),
                "spread": (max(values) - min(values)) / median if median else float("nan"),
                "rounds": len(values),
                "contended": sum(1 for n, _, _, w in self.runs if n == name and w.contended),
            }
        return out

    def ratio(self, key: str, a: str, b: str, clean_only: bool = True) -> dict:
        """a / b per round (each round's A beside that round's B), with the median and the range.

        Rounds where either window was contended are left out; when no round is clean, all rounds
        are used and the result says "contended": True (as values() does)."""
        by_round: dict[int, dict[str, float]] = {}
        for n, r, m, w in self.runs:
            if n in (a, b) and key in m and not (clean_only and w.contended):
                by_round.setdefault(r, {})[n] = m[key]
        ratios = [v[a] / v[b] for v in by_round.values() if a in v and b in v and v[b]]
        if not ratios and clean_only:
            return {**self.ratio(key, a, b, clean_only=False), "contended": True}
        if not ratios:
            return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "rounds": 0}
        return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def interleave(
    contenders: dict[str, Callable[[], dict]],
    rounds: int = 3,
    *,
    strict: bool = False,
    max_foreign_cores: float = 0.25,
    log: Callable[[str], None] | None = print,
) -> Interleaved:
    """Run the contenders A B A B ... for `rounds` rounds (the order alternates each round).

    Each callable does one whole measurement and returns a dict of numbers. With `strict`,
    a window in which other processes took more than `max_foreign_cores` stops the run
    (RuntimeError naming the window); otherwise it is kept, marked and left out of the medians.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; expected >= 1")
    result = Interleaved()
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            with CpuWindow(max_foreign_cores) as window:
                measures = contenders[name]()
            result.runs.append((name, r, measures, window))
            if log is not None:
                note = f"  (others took {window.foreign_cores:.2f} cores: marked contended)" if window.contended else ""
                log(f"round {r + 1}/{rounds} {name}: {_short(measures)}{note}")
            if strict and window.contended:
                raise RuntimeError(
                    f"round {r + 1} of {name!r}: other processes took {window.foreign_cores:.2f} "
                    f"cores on average (limit {max_foreign_cores}); measure on an idle machine"
                )
    return result


def add_arguments(parser, rounds: int = 3) -> None:
    """The flags every side-by-side benchmark takes: --rounds N and --strict."""
    parser.add_argument(
        "--rounds",
        type=int,
        default=rounds,
        help=f"rounds of the interleaved contenders (A B, B A, ...); medians over rounds [{rounds}]",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop when another process takes CPU during a timed window (default: mark the window "
        "and leave it out of the medians)",
    )


def median_range(stats: dict | None, suffix: str = "") -> str:
    """'412 (398–420)': a summary() entry's or a ratio()'s median, then its range over the rounds."""
    if not stats or not stats.get("rounds"):
        return "n/a"
    median, low, high = (_cell(float(stats[k])) for k in ("median", "min", "max"))
    return f"{median}{suffix} ({low}–{high}{suffix})"


def contender_rows(runs: Interleaved, key: str, suffix: str = "") -> list[list[str]]:
    """Per contender: [name, 'median (min–max)', 'spread %', 'clean rounds / rounds'] for a Markdown table."""
    rows = []
    for name, s in runs.summary(key).items():
        total = sum(1 for n, _, m, _ in runs.runs if n == name and key in m)
        rows.append([name, median_range(s, suffix), f"{100 * s['spread']:.1f}%", f"{total - s['contended']}/{total}"])
    return rows


def clean_rounds(ratio: dict, rounds: int) -> str:
    """'k/n' for a ratio(): the clean rounds it pairs (0 when every round was contended and it used them all)."""
    return f"{0 if ratio.get('contended') else ratio['rounds']}/{rounds}"


def _short(measures: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in measures.items())


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; floats keep 3 significant decimals."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_columns(runs: dict[str, tuple[dict, list[list]]], stage_order=None) -> tuple[list[list], list[list]]:
    """One column per finished run (a demo, a fit): (stage rows, figure rows) for two markdown tables.

    runs[label] = (cells: {stage: value}, rows: [[measure, value, target, mark], ...]). Stage rows are
    [stage, value per run] (stages in first-seen order, or sorted by `stage_order`); figure rows are
    [measure, target, "value mark" per run], a run that lacks a row leaving its cell empty."""
    labels = list(runs)
    stages = list(dict.fromkeys(k for cells, _ in runs.values() for k in cells))
    if stage_order is not None:
        stages.sort(key=stage_order)
    stage_rows = [[s, *(runs[lab][0].get(s, "") for lab in labels)] for s in stages]
    measures = list(dict.fromkeys(r[0] for _, rows in runs.values() for r in rows))
    target_of = {r[0]: r[2] for _, rows in runs.values() for r in rows}
    value = {(lab, r[0]): f"{r[1]} {r[3]}".strip() for lab in labels for r in runs[lab][1]}
    figure_rows = [[m, target_of[m], *(value.get((lab, m), "") for lab in labels)] for m in measures]
    return stage_rows, figure_rows


def _cell(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:,.0f}" if isinstance(v, float) else str(v))


def machine() -> dict:
    """What ran it: CPU model, cores, Python, torch (if imported), commit."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    if commit and changed:  # the code that ran is that commit plus uncommitted changes to tracked files
        commit += "+changes"
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "commit": commit or None}
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def write_results(name: str, results: dict, table: str, *, results_dir: str | os.PathLike = RESULTS) -> Path:
    """Write NAME.json (results + command + machine + date) and NAME.md (the table, with how it was made)."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
    }
    path = folder / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**meta, "results": results}, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    md = folder / f"{name}.md"
    header = (
        f"<!-- {meta['command']} | {meta['date']} | {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores | commit {meta['machine']['commit']} -->\n"
    )
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(header + table)
    os.replace(tmp, md)
    return path

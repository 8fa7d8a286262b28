"""Benchmark: the cost of one ingest run as the landing folder's history grows (not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_ingest_growth.py [--runs 100] [--files-per-run 1000]

Each of ``--runs`` runs delivers ``--files-per-run`` new small JSONL files (``--lines-per-file``
lines each, as the HTTP intake writes them: one file per request) into a landing folder that
keeps every earlier file, then runs what the ingest DAG runs, :func:`tasks.ingest.landing.ingest`
and :func:`tasks.ingest.validate.validate`, timed apart. By the last run the folder holds ``runs x
files-per-run`` files (100,000 by default), the manifest as many entries and the store one part per
run; a run's new work stays the same, so its time must stay flat.

The lines are simulated (:func:`tasks.demo.simulate.simulate`: records with PII, at-least-once
duplicates and late feedback events, no malformed lines) once, before the first run, and reused
with fresh ids (a suffix per reuse), in timestamp order, so feedback arrives after its record and
some waits, pending, for a later run. Writing the files is not timed.

Each run is also made, right after, in a new home holding nothing but that run's files: the
same work without the history. Every 10 runs the benchmark prints the median seconds per run of
those 10 (wall clock, and this process's CPU time), and the median of each run's time over its
no-history twin's. At the end it compares the last 10 runs with the first 10: by wall clock, by
CPU time, and by that ratio to the no-history run, which is the figure the target applies to
(a busy machine speeds up and slows down both alike, so the history's own cost is what is left).
Target: the last 10 runs' ratio at most ``--max-growth`` (1.5) times the first 10's, for ingest,
validate and both; exit status 1 if one is more.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MAX_GROWTH = 1.5
REUSE = 10  # the simulated lines are reused this many times, each with fresh ids


def simulated_lines(total: int, seed: int = 0) -> list[str]:
    """``total`` JSONL lines (records and late feedback events) in timestamp order."""
    from tasks.demo.simulate import SimulateConfig, simulate

    per_pass = math.ceil(total / REUSE)
    start = (datetime.now(UTC) - timedelta(days=3)).date()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-growth-gen-") as home:
        simulate(SimulateConfig(home=home, days=1, records_per_day=per_pass, seed=seed,
                                start_date=start, malformed_rate=0.0))
        items = [json.loads(line) for path in sorted((Path(home) / "landing").glob("*.jsonl"))
                 for line in path.read_text().splitlines() if line.strip()]
    items.sort(key=lambda item: item["timestamp"])
    lines: list[str] = []
    for reuse in range(REUSE):
        for item in items:
            lines.append(json.dumps({**item, "id": f"{item['id']}-{reuse}"},
                                    separators=(",", ":")))
            if len(lines) == total:
                return lines
    return lines


def deliver(landing: Path, run: int, lines: list[str], files: int, per_file: int) -> None:
    """``files`` new JSONL files named like the intake's, ``per_file`` lines each."""
    for i in range(files):
        chunk = lines[i * per_file:(i + 1) * per_file]
        (landing / f"http-{run:04d}-{i:05d}.jsonl").write_text("\n".join(chunk) + "\n")


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def one_run(home: Path, run_id: str, files: int) -> tuple[int, dict[str, float]]:
    """Ingest then validate ``home``'s new files: ``(records stored, seconds per step)``."""
    from tasks.ingest.landing import IngestConfig, ingest
    from tasks.ingest.validate import ValidateConfig, validate

    staged, ingest_wall, ingest_cpu = timed(ingest, IngestConfig(home=str(home), run_id=run_id))
    assert len(staged.files) + len(staged.skipped_files) == files, "files not staged"
    checked, validate_wall, validate_cpu = timed(
        validate, ValidateConfig(home=str(home), run_id=run_id, on_excess="flag"))
    return checked.stored, {
        "ingest": ingest_wall, "validate": validate_wall, "both": ingest_wall + validate_wall,
        "ingest_cpu": ingest_cpu, "validate_cpu": validate_cpu,
        "both_cpu": ingest_cpu + validate_cpu}


STEPS = ("ingest", "validate", "both")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="Ingest runs (default 100)")
    parser.add_argument("--files-per-run", type=int, default=1000,
                        help="New landing files per run (default 1,000)")
    parser.add_argument("--lines-per-file", type=int, default=3,
                        help="Lines per file (default 3)")
    parser.add_argument("--max-growth", type=float, default=MAX_GROWTH,
                        help="Largest growth allowed, last 10 runs against the first 10 "
                             "(default 1.5)")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary home")
    args = parser.parse_args()
    window = min(10, args.runs)

    import shutil

    import great_expectations  # noqa: F401 - imported before the first timed run
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    per_run = args.files_per_run * args.lines_per_file
    started = time.perf_counter()
    lines = simulated_lines(args.runs * per_run)
    print(f"ingest growth benchmark: {args.runs} runs x {args.files_per_run:,} new files x "
          f"{args.lines_per_file} lines ({per_run:,} lines a run, {len(lines):,} in all); lines "
          f"simulated in {time.perf_counter() - started:.1f} s (not counted)")

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-growth-"))
    (home / "landing").mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="flywheel-bench-growth-control-"))

    def control(run: int, batch: list[str]) -> dict[str, float]:
        """The same run in a new home: no history."""
        fresh = scratch / f"run-{run}"
        (fresh / "landing").mkdir(parents=True)
        deliver(fresh / "landing", run, batch, args.files_per_run, args.lines_per_file)
        try:
            return one_run(fresh, f"control-{run:04d}", args.files_per_run)[1]
        finally:
            shutil.rmtree(fresh, ignore_errors=True)

    control(0, lines[:per_run])  # so no timed run pays for a first call

    print(f"home: {home}\n")
    print(f"{'runs':>9} {'files':>9} {'stored':>9} | {'median s per run, wall (CPU)':^44} | "
          f"{'x the same run, no history':^26}")
    print(f"{'':>9} {'':>9} {'':>9} | " + " ".join(f"{k:>14}" for k in STEPS) + " | "
          + " ".join(f"{k:>8}" for k in STEPS))
    rows: list[dict[str, float]] = []
    stored = 0

    def median(chunk: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in chunk)

    try:
        for run in range(1, args.runs + 1):
            batch = lines[(run - 1) * per_run:run * per_run]
            deliver(home / "landing", run, batch, args.files_per_run, args.lines_per_file)
            new, row = one_run(home, f"growth-{run:04d}", args.files_per_run)
            stored += new
            alone = control(run, batch)
            row.update({f"{k}_x": row[k] / alone[k] for k in STEPS})
            rows.append(row)
            if run % window == 0 or run == args.runs:
                chunk = rows[-window:]
                print(f"{run - len(chunk) + 1:>4}-{run:<4} {run * args.files_per_run:>9,} "
                      f"{stored:>9,} | "
                      + " ".join(f"{median(chunk, k):>6.3f} ({median(chunk, k + '_cpu'):.3f})"
                                 for k in STEPS) + " | "
                      + " ".join(f"{median(chunk, k + '_x'):>7.2f}x" for k in STEPS),
                      flush=True)

        first, last = rows[:window], rows[-window:]
        print(f"\ngrowth, last {window} runs against the first {window} (medians):")
        print(f"  {'':<9} {'wall':>7} {'CPU':>7}   {'x no history':>12}")
        ok = True
        for key in STEPS:
            wall = median(last, key) / median(first, key)
            cpu = median(last, key + "_cpu") / median(first, key + "_cpu")
            growth = median(last, key + "_x") / median(first, key + "_x")
            ok = ok and growth <= args.max_growth
            print(f"  {key:<9} {wall:>6.2f}x {cpu:>6.2f}x   {growth:>11.2f}x  (target <= "
                  f"{args.max_growth}x: {'met' if growth <= args.max_growth else 'NOT met'})")
        print(f"targets: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

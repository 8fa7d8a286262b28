"""Benchmark of ingest + validate on simulated JSONL landing files (not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_ingest.py [--records 1000000] [--days 5]

It writes about ``--records`` simulated log records (:func:`tasks.demo.simulate.simulate`, JSONL,
``days x records_per_day``) into a temporary flywheel home (timed apart, not counted), then
measures over the same landing files (records files and late-feedback files):

* **baseline**: ``pandas.read_json(path, lines=True)`` of every file, nothing else;
* **full path**: :func:`tasks.ingest.landing.ingest` (parse, PII redaction, staging Parquet)
followed by
  :func:`tasks.ingest.validate.validate` (great-expectations suite, quarantine, store), one
  ``run_id``.

Each phase runs in its own fresh Python subprocess started from this lean parent (which imports
no pandas), and reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), so the baseline's
memory never mixes into the full path's. Throughput is lines/s over the phase's work (imports
excluded; the process wall time, imports included, is printed as well). The phase's CPU time
(user + system, this process) is printed beside its wall time: on a shared machine it is the
steadier figure.

The simulator's malformed lines are switched off (``malformed_rate=0``): a single truncated JSON
line makes ``pandas.read_json`` raise, and the baseline must read the same files as the full path.

Targets: full path <= 2x the baseline's wall-clock time, peak RSS of the full path < 4 GB; exit
status 1 if either is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RUN_ID = "bench"
MARKER = "BENCH_RESULT "
RATIO_TARGET = 2.0
RSS_TARGET_BYTES = 4 * 1024**3


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(result: dict) -> None:
    result["peak_rss_bytes"] = _peak_rss_bytes()
    print(MARKER + json.dumps(result), flush=True)


def _landing_jsonl(home: Path) -> list[Path]:
    return sorted(p for p in (home / "landing").glob("*.jsonl")
                  if not p.name.startswith(("_", ".")))


# --------------------------------------------------------------------------------------------
# phases (each run in a fresh subprocess)


def phase_generate(home: Path, records: int, days: int) -> None:
    from tasks.demo.simulate import SimulateConfig, simulate

    per_day = math.ceil(records / days)
    # End the window before today: validate rejects timestamps more than a day in the future.
    start = (datetime.now(UTC) - timedelta(days=days + 2)).date()
    started = time.perf_counter()
    result = simulate(SimulateConfig(home=home, days=days, records_per_day=per_day, seed=0,
                                     start_date=start, malformed_rate=0.0))
    seconds = time.perf_counter() - started
    _emit({"phase": "generate", "seconds": seconds, "records": result.records,
           "duplicates": result.duplicates, "feedback_late": result.feedback_late,
           "per_day": per_day, "days": days, "files": len(result.files),
           "bytes": sum(p.stat().st_size for p in _landing_jsonl(home))})


def phase_baseline(home: Path) -> None:
    import pandas as pd

    files = _landing_jsonl(home)
    started, cpu = time.perf_counter(), _cpu_seconds()
    rows = 0
    for path in files:
        rows += len(pd.read_json(path, lines=True))
    _emit({"phase": "baseline", "seconds": time.perf_counter() - started,
           "cpu_seconds": _cpu_seconds() - cpu, "lines": rows})


def phase_full(home: Path) -> None:
    from tasks.ingest.landing import IngestConfig, ingest
    from tasks.ingest.validate import ValidateConfig, validate

    started, cpu = time.perf_counter(), _cpu_seconds()
    staged = ingest(IngestConfig(home=str(home), run_id=RUN_ID))
    after_ingest, ingest_cpu = time.perf_counter(), _cpu_seconds()
    ingest_peak = _peak_rss_bytes()
    checked = validate(ValidateConfig(home=str(home), run_id=RUN_ID))
    done = time.perf_counter()
    _emit({"phase": "full", "seconds": done - started, "ingest_seconds": after_ingest - started,
           "validate_seconds": done - after_ingest, "cpu_seconds": _cpu_seconds() - cpu,
           "ingest_cpu_seconds": ingest_cpu - cpu, "ingest_peak_rss_bytes": ingest_peak,
           "lines": staged.lines_in,
           "records_parsed": staged.records_parsed, "feedback_events": staged.feedback_events,
           "ingest_quarantined": staged.quarantined,
           "pii_redacted": sum(staged.pii_redacted.values()), "stored": checked.stored,
           "duplicates": checked.duplicates, "validate_quarantined": checked.quarantined,
           "feedback_merged": checked.feedback_merged})


# --------------------------------------------------------------------------------------------
# the parent: runs each phase in a subprocess and prints the table


def run_phase(name: str, home: Path, extra: list[str] | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--home",
               str(home), *(extra or [])]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"phase {name} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(MARKER):])
    result["process_wall_seconds"] = wall
    return result


def _gb(n: float) -> str:
    return f"{n / 1024**3:.2f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="Approximate number of simulated records (default 1,000,000)")
    parser.add_argument("--days", type=int, default=5, help="Simulated days (files)")
    parser.add_argument("--phase", choices=["generate", "baseline", "full"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary home")
    args = parser.parse_args()

    if args.phase == "generate":
        phase_generate(args.home, args.records, args.days)
        return 0
    if args.phase == "baseline":
        phase_baseline(args.home)
        return 0
    if args.phase == "full":
        phase_full(args.home)
        return 0

    days = max(1, min(args.days, args.records))
    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-ingest-"))
    try:
        gen = run_phase("generate", home, ["--records", str(args.records), "--days", str(days)])
        print(f"ingest benchmark: {gen['records']:,} records ({gen['days']} days x "
              f"{gen['per_day']:,}/day, +{gen['duplicates']:,} duplicates, "
              f"{gen['feedback_late']:,} late feedback events) in {gen['files']} JSONL files, "
              f"{gen['bytes'] / 1e6:,.0f} MB; generated in {gen['seconds']:.1f} s (not counted)")
        print(f"home: {home}; cpus: {os.cpu_count()}\n")

        base = run_phase("baseline", home)
        full = run_phase("full", home)
        if base["lines"] != full["lines"]:
            print(f"WARNING: baseline read {base['lines']:,} rows, ingest {full['lines']:,} lines")

        ratio = full["seconds"] / base["seconds"]
        print(f"{'phase':<28} {'lines':>10} {'work s':>8} {'CPU s':>8} {'lines/s':>10} "
              f"{'proc s':>8} {'peak RSS':>10}")
        for name, row in (("baseline pandas.read_json", base), ("full: ingest + validate", full)):
            print(f"{name:<28} {row['lines']:>10,} {row['seconds']:>8.1f} "
                  f"{row['cpu_seconds']:>8.1f} {row['lines'] / row['seconds']:>10,.0f} "
                  f"{row['process_wall_seconds']:>8.1f} {_gb(row['peak_rss_bytes']):>10}")
        validate_cpu = full["cpu_seconds"] - full["ingest_cpu_seconds"]
        print(f"{'  of which ingest':<28} {'':>10} {full['ingest_seconds']:>8.1f} "
              f"{full['ingest_cpu_seconds']:>8.1f} "
              f"{full['lines'] / full['ingest_seconds']:>10,.0f}")
        print(f"{'  of which validate':<28} {'':>10} {full['validate_seconds']:>8.1f} "
              f"{validate_cpu:>8.1f}")
        print(f"  peak RSS after ingest {_gb(full['ingest_peak_rss_bytes'])}, after validate "
              f"{_gb(full['peak_rss_bytes'])}")
        print(f"\nfull path: {full['records_parsed']:,} records + {full['feedback_events']:,} "
              f"feedback events staged, {full['ingest_quarantined']} quarantined at ingest, "
              f"{full['pii_redacted']:,} PII values redacted; stored {full['stored']:,}, "
              f"duplicates {full['duplicates']:,}, quarantined at validate "
              f"{full['validate_quarantined']:,}, feedback merged {full['feedback_merged']:,}")

        ratio_ok = ratio <= RATIO_TARGET
        rss_ok = full["peak_rss_bytes"] < RSS_TARGET_BYTES
        print(f"\nratio full/baseline (time): {ratio:.2f}x  (CPU time: "
              f"{full['cpu_seconds'] / base['cpu_seconds']:.2f}x)  (target <= "
              f"{RATIO_TARGET:.0f}x: {'met' if ratio_ok else 'NOT met'})")
        print(f"peak RSS of the full path: {_gb(full['peak_rss_bytes'])}  (target < "
              f"{_gb(RSS_TARGET_BYTES)}: {'met' if rss_ok else 'NOT met'})")
        print(f"targets: {'met' if ratio_ok and rss_ok else 'NOT met'}")
        return 0 if ratio_ok and rss_ok else 1
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the HTTP intake under a bounded load, then an end-to-end count check (not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_intake_http.py [--requests 2000] [--batch 10]
        [--concurrency 8] [--max-seconds 60]

It starts the intake (:func:`tasks.ingest.intake.create_app`) with uvicorn on 127.0.0.1 at a free
port in a subprocess, its token in ``$FLYWHEEL_INTAKE_TOKEN`` and a temporary
``$FLYWHEEL_HOME``, as ``tests/ingest/test_intake.py`` does; then ``--concurrency`` threads, each
with its own ``httpx.Client``, POST ``--requests`` requests of ``--batch`` contract records each
to ``/v1/records`` (no new request is started after ``--max-seconds``). It prints requests/s,
records/s and the p50/p95/max request latency, stops the server by its PID (terminate, wait),
runs :func:`tasks.ingest.landing.ingest` and :func:`tasks.ingest.validate.validate` on that home,
and checks that every accepted record was stored (the counts, and the ids read back with
``load_store``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tasks.core.records import SCHEMA_VERSION, make_request, make_response  # noqa: E402

TOKEN = "bench-token-0123456789"
QUERIES = [("how do I reset my card pin", "banking"), ("book a flight to denver", "travel"),
           ("what's my pto balance", "work"), ("set a timer for ten minutes", "utility"),
           ("tell me a joke", "small_talk"), ("my card was declined at the store", "credit_cards")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _record(n: int) -> dict:
    query, expert = QUERIES[n % len(QUERIES)]
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"schema_version": SCHEMA_VERSION, "id": uuid.uuid4().hex, "timestamp": stamp,
            "workload_id": "router", "client_id": "hr-portal", "model": "teacher-70b",
            "request": make_request(query), "response": make_response(expert, f"c{n}"),
            "latency_ms": 800.0 + n % 500, "ttft_ms": 300.0}


def start_server(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_INTAKE_TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tasks.ingest.intake:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            raise SystemExit("intake server exited: "
                             + (server.stderr.read().decode() if server.stderr else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit("intake server did not start within 30 s")
        time.sleep(0.1)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def load(base: str, requests: int, batch: int, concurrency: int, max_seconds: float) -> dict:
    """Send the load; returns latencies, accepted ids and failures."""
    lock = threading.Lock()
    next_request = [0]
    latencies: list[float] = []
    accepted_ids: list[str] = []
    failures: list[str] = []
    stop_at = time.perf_counter() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while True:
                with lock:
                    n = next_request[0]
                    if n >= requests or time.perf_counter() >= stop_at:
                        return
                    next_request[0] += 1
                records = [_record(n * batch + i) for i in range(batch)]
                started = time.perf_counter()
                try:
                    response = client.post("/v1/records", json={"records": records})
                except httpx.TransportError as exc:
                    with lock:
                        failures.append(f"transport: {exc}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code == 202 and response.json().get("accepted") == batch:
                        accepted_ids.extend(r["id"] for r in records)
                    else:
                        failures.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - started, "sent": next_request[0],
            "latencies": latencies, "accepted_ids": accepted_ids, "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=10, help="Records per request")
    parser.add_argument("--concurrency", type=int, default=8, help="Concurrent clients")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="No new request is started after this many seconds")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary home")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-intake-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(home, port)
    print(f"intake benchmark: uvicorn pid {server.pid} at {base}, home {home}; "
          f"{args.requests} requests x {args.batch} records, {args.concurrency} concurrent "
          f"clients, cap {args.max_seconds:.0f} s; cpus: {os.cpu_count()}\n")
    try:
        result = load(base, args.requests, args.batch, args.concurrency, args.max_seconds)
    finally:
        stop_server(server)
    print(f"server pid {server.pid} stopped (exit code {server.returncode})")

    latencies = sorted(result["latencies"])
    accepted = result["accepted_ids"]
    seconds = result["seconds"]
    ok_requests = len(accepted) // args.batch
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000 \
        if latencies else float("nan")
    print(f"\n{'requests sent':<24} {result['sent']:>10,}")
    print(f"{'requests accepted':<24} {ok_requests:>10,}")
    print(f"{'failures':<24} {len(result['failures']):>10,}")
    print(f"{'elapsed s':<24} {seconds:>10.1f}")
    print(f"{'requests/s':<24} {ok_requests / seconds:>10,.0f}")
    print(f"{'records/s':<24} {len(accepted) / seconds:>10,.0f}")
    print(f"{'latency p50 ms':<24} {p50:>10.1f}")
    print(f"{'latency p95 ms':<24} {p95:>10.1f}")
    print(f"{'latency max ms':<24} {latencies[-1] * 1000 if latencies else float('nan'):>10.1f}")
    for failure in result["failures"][:5]:
        print(f"   failure: {failure}")

    from tasks.ingest.landing import IngestConfig, ingest
    from tasks.ingest.store import load_store
    from tasks.ingest.validate import ValidateConfig, validate

    started = time.perf_counter()
    staged = ingest(IngestConfig(home=str(home), run_id="bench-http"))
    checked = validate(ValidateConfig(home=str(home), run_id="bench-http"))
    stored_ids = set(load_store(home)["id"])
    pipeline_s = time.perf_counter() - started
    missing = set(accepted) - stored_ids
    ok = (checked.stored == len(accepted) and not missing and len(stored_ids) == len(accepted)
          and not result["failures"])
    print(f"\ningest + validate in {pipeline_s:.1f} s: {len(staged.files)} files, "
          f"{staged.lines_in:,} lines, {staged.quarantined} quarantined at ingest, "
          f"{checked.quarantined} at validate, {checked.duplicates} duplicates")
    print(f"check: accepted {len(accepted):,} == stored {checked.stored:,} "
          f"(load_store ids {len(stored_ids):,}, accepted ids missing {len(missing)}): "
          f"{'OK' if ok else 'MISMATCH'}")
    if args.keep:
        print(f"kept {home}")
    else:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

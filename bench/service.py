"""The HTTP service under load on loopback: batch ingest rate and support-lookup latency.

1. A store with the bundled Online Retail data, segmented (SQLite by default, ``--pg URL``).
2. ``shoal serve`` in a subprocess (its own process: the load client does not share its GIL).
3. ``POST /v1/batch``: ``--events`` Segment ``track`` messages (existing and new customers,
   views, carts and orders) in batches of ``--batch`` messages from ``--clients`` threads (4 by
   default: requests commit one at a time under the ingest lock, so more clients keep one
   prepared while another commits; on a fresh store 2 and 4 gave the same rate, on a store of
   ~1.5M events 4 gave 19.8-20.8k events/s where 2 gave 13-15k, 2026-11-27 22:45); events
   per second, and the accounting (sent = accepted + duplicates + rejected; the store's event
   count grew by the accepted ones). Baseline in the same run: the library's ingest of the same
   messages from a JSON-lines file (no HTTP).
4. ``GET /v1/users/{id}`` open-loop at ``--rate`` requests per second for ``--seconds``, from a
   client in its own process (asyncio over keep-alive connections): latency percentiles.
   Baseline: ``api.user`` in process.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/service.py [--events 200000] [--batch 2000]
        [--clients 4] [--rate 200] [--seconds 10] [--pg URL]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import httpx
import numpy as np
import pandas as pd

from automation import api

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def messages(users: list[str], items: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` Segment messages: 80% by known users, views, adds and one-product orders of
    ``items``. Each item keeps one price (a shop's catalogue): a price drawn anew per message
    (the script before 2026-11-27 18:45) made every request rewrite ~1,500 rows of ``items``."""
    rng = random.Random(seed)
    price = {item: round(random.Random(f"price:{item}").uniform(1, 20), 2) for item in items}
    kinds = ["Product Viewed"] * 6 + ["Product Added"] * 2 + ["Order Completed"]
    start = pd.Timestamp("2011-12-10T08:00:00Z")
    out = []
    for i in range(n):
        user = rng.choice(users) if rng.random() < 0.8 else f"web-{rng.randrange(n // 20)}"
        item = rng.choice(items)
        kind = rng.choice(kinds)
        props: dict[str, Any] = {"product_id": item, "price": price[item]}
        if kind == "Order Completed":
            props = {"order_id": f"web-o{i}", "products": [{**props, "quantity": 1}]}
        out.append(
            {
                "type": "track",
                "userId": user,
                "event": kind,
                "messageId": f"bench-{seed}-{i}",
                "timestamp": (start + pd.Timedelta(seconds=i)).isoformat(),
                "properties": props,
            }
        )
    return out


def serve(db: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SHOAL_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    env.pop("SHOAL_BROKER_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "shoal"),
                "serve",
                "--db",
                db,
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").json().get("recommender_ready"):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the service did not get ready:\n{log.read_text()[-3000:]}")


def post_batches(port: int, msgs: list[dict[str, Any]], size: int, clients: int) -> dict[str, Any]:
    # The bodies are encoded before the clock starts (as a load generator replays a prepared
    # body): encoding 2,000 messages is ~10-20 ms of CPU on the 2 cores the server needs.
    chunks = [msgs[i : i + size] for i in range(0, len(msgs), size)]
    bodies = [json.dumps({"batch": chunk}).encode() for chunk in chunks]
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "requests": 0}
    lock = threading.Lock()
    latencies: list[float] = []

    def work(mine: list[bytes]) -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=120,
        ) as c:
            for body in mine:
                t = time.perf_counter()
                r = c.post("/v1/batch", content=body)
                r.raise_for_status()
                got = r.json()
                with lock:
                    latencies.append(time.perf_counter() - t)
                    totals["requests"] += 1
                    for k in ("accepted", "duplicates", "rejected"):
                        totals[k] += got[k]

    t0, cpu0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=work, args=(bodies[i::clients],)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    return {
        **totals,
        "seconds": seconds,
        "client_cpu_s": time.process_time() - cpu0,
        "events_per_second": len(msgs) / seconds,
        "p50_request_s": float(np.percentile(latencies, 50)),
    }


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """(CPU seconds of process ``pid``, of its descendants, of the local PostgreSQL server's
    processes): utime + stime from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    postgres = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                postgres += stats[int(entry.name)][1]
        except OSError:
            continue
    children: dict[int, list[int]] = {}
    for p, (parent, _) in stats.items():
        children.setdefault(parent, []).append(p)
    below, todo = 0.0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        below += stats[p][1]
        todo.extend(children.get(p, []))
    return stats.get(pid, (0, 0.0))[1], below, postgres


def lookups(port: int, users: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """``GET /v1/users/{id}`` open loop at ``rate`` per second, from a client in its own process
    (asyncio streams over keep-alive connections, ~0.1 ms of CPU a request: the 16-thread
    ``httpx`` client before 2026-11-27 21:30 used as much CPU as the server and shared its
    cores' time slices with it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(users, f)
    try:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--lookup-client",
                str(port),
                f.name,
                str(rate),
                str(seconds),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(f.name)
    res: dict[str, Any] = json.loads(out.stdout)
    return res


async def _open_loop(
    port: int, users: list[str], rate: float, seconds: float, conns: int = 32
) -> dict[str, Any]:
    import asyncio

    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    n = int(rate * seconds)
    lat: list[float] = []
    status: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def one(i: int) -> None:
        due = start + i / rate
        reader, writer = await free.get()
        writer.write(f"GET /v1/users/{users[i % len(users)]} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        code = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        lat.append(loop.time() - due)  # open loop: latency counts from the scheduled time
        status[code] = status.get(code, 0) + 1
        free.put_nowait((reader, writer))

    tasks = []
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    ended = loop.time()
    arr = np.array(lat) * 1000
    return {
        "requests": n,
        "status": {str(k): v for k, v in status.items()},
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
        "achieved_rps": n / (ended - start),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--lookup-client":
        import asyncio

        port, path, rate, seconds = sys.argv[2:6]
        users = json.loads(Path(path).read_text())
        res = asyncio.run(_open_loop(int(port), users, float(rate), float(seconds)))
        print(json.dumps(res))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pg", default=None, help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    common.pin_threads()
    info = common.machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-service-"))
    if args.pg:
        with common.pg_schema(args.pg, "bench_service") as (_, url):
            run(args, info, tmp, url)
    else:
        run(args, info, tmp, f"sqlite:///{tmp / 'shop.db'}")


def run(args: Any, info: dict[str, Any], tmp: Path, db: str) -> None:
    engine = api.connect(db)
    common.log("ingest + segment the bundled Online Retail data")
    api.ingest(engine, [api.BUNDLED_ONLINE_RETAIL], preset="online-retail")
    api.segment(engine, k="auto")
    users = api.assignments(engine)["user_id"].astype(str).tolist()
    from sqlalchemy import text

    with engine.connect() as conn:
        items = [r[0] for r in conn.execute(text("SELECT external_id FROM items LIMIT 2000"))]
        before = int(conn.execute(text("SELECT COUNT(*) FROM events")).scalar() or 0)
    msgs = messages(users, items, args.events, seed=1)
    base_msgs = messages(users, items, args.events, seed=2)
    jsonl = tmp / "baseline.jsonl"
    jsonl.write_text("\n".join(json.dumps(m) for m in base_msgs) + "\n")
    common.log("baseline: library ingest of the same kind of messages from a file")
    t = time.perf_counter()
    base = api.ingest(engine, [jsonl])
    base_s = time.perf_counter() - t
    with engine.connect() as conn:
        before = int(conn.execute(text("SELECT COUNT(*) FROM events")).scalar() or 0)
    engine.dispose()
    port = common_free_port()
    proc = serve(db, port, tmp / "serve.log", args.workers)
    try:
        common.log(f"POST /v1/batch: {args.events:,} events, {args.batch} per request")
        cpu0, load0 = cpu_seconds(proc.pid), os.getloadavg()[0]
        ing = post_batches(port, msgs, args.batch, args.clients)
        cpu1, load1 = cpu_seconds(proc.pid), os.getloadavg()[0]
        common.log("waiting for the background fold and refit to settle")
        settle(port)
        common.log(f"GET /v1/users/{{id}} at {args.rate:g}/s for {args.seconds:g} s")
        look = lookups(port, users, args.rate, args.seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    engine = api.connect(db)
    with engine.connect() as conn:
        after = int(conn.execute(text("SELECT COUNT(*) FROM events")).scalar() or 0)
    sample = random.Random(0).sample(users, 200)
    t = time.perf_counter()
    lib = []
    for u in sample:
        s = time.perf_counter()
        api.user(engine, u)
        lib.append((time.perf_counter() - s) * 1000)
    engine.dispose()
    common.print_machine(info)
    print(f"\nstore: {db.split('://')[0]}, Online Retail + {args.events:,} API events\n")
    sent = args.events
    rows = ing["accepted"] + ing["duplicates"] + ing["rejected"]
    print(
        f"POST /v1/batch: {ing['events_per_second']:,.0f} events/s "
        f"({ing['requests']} requests of {args.batch}, {args.clients} clients, "
        f"{ing['seconds']:.1f} s; median request {ing['p50_request_s'] * 1000:.0f} ms)"
        f"   target >= 20,000 events/s"
    )
    per = 1000 / max(ing["requests"], 1)
    print(
        f"  server CPU per request: {(cpu1[0] - cpu0[0]) * per:.0f} ms in the API process, "
        f"{(cpu1[1] - cpu0[1]) * per:.0f} ms in its child processes (background work), "
        f"{ing['client_cpu_s'] * per:.0f} ms in the load client, "
        f"{(cpu1[2] - cpu0[2]) * per:.0f} ms in PostgreSQL; "
        f"load average (1 min) {load0:.2f} -> {load1:.2f}"
    )
    print(f"  baseline, library ingest of a JSON-lines file: {base.read / base_s:,.0f} events/s")
    print(
        f"  accounting: sent {sent:,} messages -> {rows:,} rows (orders expand per product): "
        f"accepted {ing['accepted']:,}, duplicates {ing['duplicates']:,}, "
        f"rejected {ing['rejected']:,}; store grew by {after - before:,} events"
    )
    print(
        f"GET /v1/users/{{id}} at {args.rate:g}/s: p50 {look['p50_ms']:.1f} ms, "
        f"p95 {look['p95_ms']:.1f} ms, p99 {look['p99_ms']:.1f} ms, max {look['max_ms']:.1f} ms, "
        f"status {look['status']}, achieved {look['achieved_rps']:.0f}/s   target p99 < 20 ms"
    )
    print(
        f"  baseline, api.user in process: p50 {np.percentile(lib, 50):.1f} ms, "
        f"p99 {np.percentile(lib, 99):.1f} ms"
    )


def settle(port: int, timeout: float = 600.0) -> None:
    """Until the service has folded everything and refitted the recommender on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        store = h.get("store_at")
        if h.get("recommender_at") == store and h.get("snapshot_version") == store[1]:
            time.sleep(1.0)
            return
        time.sleep(0.5)


def common_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())

"""Load benchmark of `python -m pipeline serve`: throughput and latency at 1, 8 and 64
concurrent clients, on 127.0.0.1 only, bounded in time.

    python bench/serve_load.py --bundle models/export --texts data/raw/test.parquet
                               [--clients 1 8 64] [--seconds 20] [--texts-per-request 1] [--poison-every 30]

Starts the server as a subprocess (`serve --port 0`), then for each concurrency level runs
that many clients for --seconds (after 2 s of warm-up), each sending one request after
another on its own keep-alive connection: POST /predict with IMDB test reviews, one text
({"text": ...}) or --texts-per-request texts ({"texts": [...]}) each. The clients are raw
asyncio HTTP/1.1 in one process (a full HTTP client library would need a core of its own
at these rates on a 2-core machine); every response must be 200 with one prediction per
text, else it counts as an error. With --poison-every N, every N-th request carries a poison
text (a lone surrogate, "\\ud800", as a broken JSON escape sends it): its answers are counted
by status apart, and an error of any other request counts against the server. Prints JSON:
texts/s, requests/s, p50/p99 latency (ms), errors of the good requests, poison answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


async def request(reader, writer, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return status, await reader.readexactly(length)


POISON = b'{"text": "a poisoned request \\ud800 with a lone surrogate"}'


async def client(port: int, bodies: list[tuple[bytes, int]], offset: int, until: float, warm_until: float, out: dict, poison_every: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (now := time.perf_counter()) < until:
            poisoned = poison_every > 0 and i % poison_every == 0
            body, count = (POISON, 1) if poisoned else bodies[i % len(bodies)]
            i += 1
            status, data = await request(reader, writer, body)
            latency = time.perf_counter() - now
            ok = status == 200 and (count == 1 and b'"label"' in data or data.count(b'"label"') == count)
            if now < warm_until:
                continue
            if poisoned:
                out["poison"][status] = out["poison"].get(status, 0) + 1
                continue
            out["latencies"].append(latency)
            out["texts"] += count if ok else 0
            out["errors"] += 0 if ok else 1
    finally:
        writer.close()


async def level(port: int, bodies: list[tuple[bytes, int]], clients: int, seconds: float, poison_every: int = 0) -> dict:
    out = {"latencies": [], "texts": 0, "errors": 0, "poison": {}}
    start = time.perf_counter()
    warm_until, until = start + 2, start + 2 + seconds
    step = max(1, len(bodies) // clients)
    await asyncio.gather(*(client(port, bodies, k * step + k, until, warm_until, out, poison_every) for k in range(clients)))
    latencies = np.array(out["latencies"]) * 1e3
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": out["errors"],
        "texts_per_second": round(out["texts"] / seconds, 1),
        "requests_per_second": round(len(latencies) / seconds, 1),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2),
        **({"poison_answers_by_status": {str(k): v for k, v in sorted(out["poison"].items())}} if poison_every else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "models/export")
    parser.add_argument("--texts", type=Path, default=REPO / "data/raw/test.parquet")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--serve-args", default="", help="extra `serve` options, e.g. '--max-wait-ms 5'")
    parser.add_argument("--poison-every", type=int, default=0, help="every N-th request is a poisoned one (0: none)")
    args = parser.parse_args()

    import pandas as pd

    texts = pd.read_parquet(args.texts, columns=["text"])["text"].fillna("").tolist()[:5000]
    n = args.texts_per_request
    bodies = [
        (json.dumps({"text": texts[i]} if n == 1 else {"texts": texts[i : i + n]}).encode(), len(texts[i : i + n]))
        for i in range(0, len(texts) - n + 1, n)
    ]
    command = [sys.executable, "-m", "pipeline", "serve", "--bundle", str(args.bundle.resolve()), "--port", "0", *args.serve_args.split()]
    server = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        for _ in range(100):  # until /health answers
            try:
                asyncio.run(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1))
                break
            except OSError:
                time.sleep(0.1)
        results = [asyncio.run(level(port, bodies, clients, args.seconds, args.poison_every)) for clients in args.clients]
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(json.dumps({
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "texts_per_request": n,
        "poison_every": args.poison_every,
        "mean_text_chars": round(float(np.mean([len(t) for t in texts])), 1),
        "seconds_per_level": args.seconds,
        "levels": results,
    }, indent=2))


if __name__ == "__main__":
    main()

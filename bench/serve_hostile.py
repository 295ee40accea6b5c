"""/health latency while the server is under hostile requests, and the peak memory it takes.

A random gpt-tiny with a small BPE tokenizer whose chat template never ends (two nested
range(99999) loops) is served by `lmforge serve` in its own process; while /health is polled
every 50 ms, the run sends at once: 8 completions with ~1 MB prompts, 4 chats through the
freezing template, 6 requests with JSON nested 5,000 deep, and 600 half-open sockets that never
finish their headers.

    python bench/serve_hostile.py

Prints /health's latency (median, p99, max), every request's status, how many sockets the
server closed or refused, and the process's peak resident memory, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.serve import free_port
from lmforge.tokenizer import train_tokenizer

FREEZER = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"


def model_dir(root: Path) -> Path:
    out = root / "hostile"
    tok = train_tokenizer([f"the quick brown fox {i} jumps" for i in range(200)], vocab_size=300)
    tok.chat_template = FREEZER
    tok.save(out)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size, max_seq_len=512)
    save_model(Transformer(cfg), out)
    return out


def post(url: str, body: bytes, what: str, statuses: Counter) -> None:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()
            statuses[(what, r.status)] += 1
    except urllib.error.HTTPError as e:
        statuses[(what, e.code)] += 1
    except OSError as e:
        statuses[(what, type(e).__name__)] += 1


def serving(directory: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmforge", "serve", str(directory), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--device", "cpu"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                r.read()
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start")


def poll_health(url: str, seconds: float, busy=lambda: False) -> list[float]:
    """/health's latency every 50 ms for `seconds` (and while `busy()`); inf when it failed."""
    waits, start = [], time.perf_counter()
    while busy() or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url + "/health", timeout=30) as r:
                r.read()
            waits.append(time.perf_counter() - t0)
        except OSError:
            waits.append(float("inf"))
        time.sleep(0.05)
    return sorted(waits)


def summary(waits: list[float]) -> str:
    return (
        f"median {statistics.median(waits) * 1000:.0f} ms, "
        f"p99 {waits[int(len(waits) * 0.99) - 1] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms, "
        f"over 1 s: {sum(w > 1 for w in waits)} of {len(waits)}"
    )


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        default="big,template,deep,flood",
        help="which hostile requests to send (comma-separated): big, template, deep, flood",
    )
    parts = set(parser.parse_args().parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = serving(model_dir(Path(tmp)), port)
        server = SimpleNamespace(host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}")
        try:
            url = server.url
            quiet = poll_health(url, 12.0)  # the same box, no hostile requests: the baseline
            big = json.dumps({"model": "hostile", "prompt": "the fox " * 120_000, "max_tokens": 4})
            chat = json.dumps({"model": "hostile", "messages": [{"role": "user", "content": "hi"}]})
            deep = b"[" * 5000 + b"]" * 5000
            statuses: Counter = Counter()
            jobs = [(url + "/v1/completions", big.encode(), "1MB prompt")] * 8 * ("big" in parts)
            jobs += [(url + "/v1/chat/completions", chat.encode(), "freezing template")] * (
                4 * ("template" in parts)
            )
            jobs += [(url + "/v1/completions", deep, "JSON 5000 deep")] * 6 * ("deep" in parts)
            threads = [threading.Thread(target=post, args=(*j, statuses)) for j in jobs]
            sockets: list[socket.socket] = []
            refused = 0

            def flood() -> None:
                for _ in range(600):
                    s = socket.create_connection((server.host, server.port), timeout=30)
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes
                    sockets.append(s)

            if "flood" in parts:
                threads.append(threading.Thread(target=flood))
            start = time.perf_counter()
            for t in threads:
                t.start()
            waits = poll_health(url, 12.0, lambda: any(t.is_alive() for t in threads))
            for t in threads:
                t.join()
            closed = 0
            for s in sockets:
                s.settimeout(0.5)
                try:
                    reply = s.recv(64)
                    refused += reply.startswith(b"HTTP/1.1 503")
                    closed += reply == b""
                except OSError:
                    pass
                s.close()
            elapsed = time.perf_counter() - start
            peak = peak_rss_mb(proc.pid)
            stop = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            stopped = time.perf_counter() - stop
        finally:
            if proc.poll() is None:
                proc.kill()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (2-core shared box)")
    print(f"/health, no hostile requests: {summary(quiet)}")
    print(f"/health, under the hostile requests ({elapsed:.1f} s): {summary(waits)}")
    for (what, status), n in sorted(statuses.items(), key=str):
        print(f"  {what:18s} -> {status} x{n}")
    print(f"half-open sockets: {closed} closed by the header timeout, {refused} refused with 503")
    print(f"peak resident memory of the server process: {peak:.0f} MB")
    print(f"SIGTERM to exit: {stopped:.1f} s")


if __name__ == "__main__":
    main()

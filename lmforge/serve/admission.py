"""Admission control: what the server takes on before it does any work.

`Admission` holds two ledgers, both checked when a request arrives and settled when it ends:

- requests in flight (planned, queued or decoding): past `Limits.max_requests`, 429;
- KV-cache memory. The engine decodes every admitted row in one batch whose cache is as wide
  as its widest row, so the memory the admitted requests need together is bounded by

      bytes = rows * (longest prompt + largest max_tokens) * per_token + rows * per_row

  with per_token = 2 (K and V) * n_layer * n_kv_heads * head_dim * dtype bytes and per_row the
  row's vocabulary-sized buffers (logits, seen-token mask, counts). A request that cannot fit
  beside those in flight is answered 429 (try again); one that could never fit, even alone, 400.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.serve.errors import ApiError


@dataclass
class Reservation:
    """What one admitted request holds; `release()` is idempotent."""

    rows: int
    span: int
    owner: Admission | None = field(default=None, repr=False)

    def release(self) -> None:
        """Give the request's share back (when it finished, failed or its client left)."""
        if self.owner is not None:
            self.owner._release(self)
            self.owner = None


def kv_bytes_per_token(model: Any, dtype: torch.dtype) -> int:
    """Bytes one more token adds to the model's own KV cache: 2 (K and V) * sum over layers of
    n_kv_heads * head_dim * bytes per element (layers may differ, as in a pruned model). Read off
    two caches built on the meta device, so nothing is allocated."""
    one = model.new_cache(1, 1, dtype=dtype, device="meta")
    two = model.new_cache(1, 2, dtype=dtype, device="meta")
    return two.nbytes - one.nbytes


def free_memory(device: torch.device) -> int:
    """Bytes free on `device` now: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class Admission:
    """The in-flight and KV-memory ledgers of one server (thread-safe).

    Args:
        max_requests: requests in flight at once.
        kv_bytes: KV-cache memory the admitted requests may use together.
        per_token: KV bytes of one token of one row.
        per_row: bytes of one row's vocabulary-sized buffers.
    """

    def __init__(self, max_requests: int, kv_bytes: int, per_token: int, per_row: int) -> None:
        self.max_requests, self.kv_bytes = max_requests, kv_bytes
        self.per_token, self.per_row = per_token, per_row
        self._lock = threading.Lock()
        self._open: list[Reservation] = []
        self._requests = 0

    def cost(self, rows: int, span: int) -> int:
        """Bytes `rows` rows of `span` tokens (prompt + max_tokens) may need."""
        return rows * (span * self.per_token + self.per_row)

    def enter(self) -> None:
        """Count one request in flight; 429 past `max_requests`."""
        with self._lock:
            if self._requests >= self.max_requests:
                raise ApiError(
                    f"the server is busy ({self._requests} requests in flight); retry shortly.",
                    status=429,
                    type="rate_limit_error",
                    code="server_busy",
                )
            self._requests += 1

    def leave(self) -> None:
        """A request counted by `enter` is over."""
        with self._lock:
            self._requests -= 1

    def reserve(self, rows: int, span: int) -> Reservation:
        """Reserve KV memory for `rows` rows of `span` tokens; 400 if they could never fit,
        429 if they do not fit beside the requests in flight."""
        alone = self.cost(rows, span)
        if alone > self.kv_bytes:
            raise ApiError(
                f"this request needs about {alone / 2**20:.0f} MiB of KV cache ({rows} "
                f"sequences of {span} tokens) but the server has {self.kv_bytes / 2**20:.0f} "
                "MiB; lower max_tokens or n, or shorten the prompt.",
                param="max_tokens",
                code="kv_cache_exceeded",
            )
        with self._lock:
            total_rows = rows + sum(r.rows for r in self._open)
            widest = max([span, *(r.span for r in self._open)])
            if self.cost(total_rows, widest) > self.kv_bytes:
                raise ApiError(
                    "the server's KV cache is full with the requests in flight; retry shortly "
                    "or lower max_tokens.",
                    status=429,
                    type="rate_limit_error",
                    code="kv_cache_full",
                )
            reservation = Reservation(rows, span, self)
            self._open.append(reservation)
            return reservation

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            self._open = [r for r in self._open if r is not reservation]

    def snapshot(self) -> dict[str, int]:
        """Requests in flight and KV bytes reserved, for /health."""
        with self._lock:
            rows = sum(r.rows for r in self._open)
            widest = max([0, *(r.span for r in self._open)])
            return {
                "requests_in_flight": self._requests,
                "kv_reserved_bytes": self.cost(rows, widest) if rows else 0,
                "kv_budget_bytes": self.kv_bytes,
            }

"""The hash chain of the event log: each entry's hash covers its content and the previous entry's hash, so an
edited, deleted, inserted or reordered entry breaks every hash after it."""
from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(seq: int, ts: str, kind: str, request_id: str | None, version_id: str | None, payload: str,
               prev_hash: str) -> str:
    body = canonical({"seq": seq, "ts": ts, "kind": kind, "request_id": request_id, "version_id": version_id,
                      "payload": payload, "prev": prev_hash})
    return hashlib.sha256(body.encode()).hexdigest()


def check_chain(entries, head: tuple[int, str] | None) -> list[str]:
    """Problems in ``entries`` (objects with seq, ts, kind, request_id, version_id, payload, prev_hash, hash, in
    seq order) and against the recorded ``head`` (seq, hash); empty when the chain is intact."""
    problems: list[str] = []
    prev, expected = GENESIS, 1
    last = (0, GENESIS)
    for e in entries:
        if e.seq != expected:
            problems.append(f"event {expected}: missing (next entry is {e.seq}): an entry was deleted")
            expected = e.seq
        if e.prev_hash != prev:
            problems.append(f"event {e.seq}: prev_hash does not match entry {e.seq - 1}: deleted or reordered entries")
        actual = entry_hash(e.seq, e.ts, e.kind, e.request_id, e.version_id, e.payload, e.prev_hash)
        if actual != e.hash:
            problems.append(f"event {e.seq} ({e.kind}): content does not match its hash: the entry was edited")
        prev, expected, last = e.hash, expected + 1, (e.seq, e.hash)
    if head is None:
        if last[0]:
            problems.append("chain head missing: the head record was deleted")
    elif tuple(head) != last:
        problems.append(f"chain head says event {head[0]} but the log ends at event {last[0]}: "
                        "entries were deleted from (or added to) the end")
    return problems

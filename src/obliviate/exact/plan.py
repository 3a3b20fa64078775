"""The sharded training plan: ids shuffled with the seed, split into ``shards`` × ``slices``, with the
lineage id → (shard, slice) that resolves a deletion request to the models it touches."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obliviate.errors import ObliviateError


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts: every random choice of a shard, slice or prefix gets its own stream,
    so a model is a function of its own data alone (the per-shard determinism SISA's exactness needs, Bourtoule
    et al. 2021; S3T orders and seeds each prefix by its own slices)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass
class ShardPlan:
    shards: int
    slices: int
    seed: int
    assignment: list[list[np.ndarray]]          # [shard][slice] -> sorted surviving ids
    deleted: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, ids: np.ndarray, shards: int, slices: int, seed: int) -> "ShardPlan":
        ids = np.asarray(ids, dtype=np.int64)
        if shards < 1 or slices < 1:
            raise ObliviateError(f"shards and slices must be >= 1, got shards={shards}, slices={slices}")
        if shards * slices > len(ids):
            raise ObliviateError(f"{shards} shards × {slices} slices = {shards * slices} parts exceed the "
                                 f"{len(ids)} training examples; use fewer shards or slices")
        perm = np.random.default_rng([seed, 0x5157]).permutation(ids)
        assignment = [[np.sort(part) for part in np.array_split(shard, slices)]
                      for shard in np.array_split(perm, shards)]
        return cls(shards, slices, seed, assignment)

    # -- lineage ----------------------------------------------------------------------------------------
    def lineage(self) -> dict[int, tuple[int, int]]:
        return {int(i): (s, l) for s, row in enumerate(self.assignment) for l, part in enumerate(row) for i in part}

    def locate(self, ids: np.ndarray) -> tuple[dict[int, list[tuple[int, int]]], list[int]]:
        """Group ``ids`` by shard as (slice, id) pairs; return also the ids that were already deleted.

        An id that was never part of the plan is an error (it was never trained on)."""
        where = self.lineage()
        by_shard: dict[int, list[tuple[int, int]]] = {}
        already = []
        for i in map(int, np.asarray(ids).ravel()):
            if i in where:
                s, l = where[i]
                by_shard.setdefault(s, []).append((l, i))
            elif i in self.deleted:
                already.append(i)
            else:
                raise ObliviateError(f"id {i} was never trained on by this sharded model (not in its plan)")
        return by_shard, already

    def remove(self, shard: int, ids: list[int]) -> None:
        drop = np.asarray(sorted(ids), dtype=np.int64)
        self.assignment[shard] = [np.setdiff1d(part, drop) for part in self.assignment[shard]]
        self.deleted.update(int(i) for i in ids)

    # -- bookkeeping --------------------------------------------------------------------------------------
    @property
    def n_alive(self) -> int:
        return int(sum(len(p) for row in self.assignment for p in row))

    def shard_ids(self, shard: int, slices: list[int] | tuple[int, ...] | None = None) -> np.ndarray:
        order = range(self.slices) if slices is None else slices
        parts = [self.assignment[shard][l] for l in order]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def lineage_sha256(self) -> str:
        h = hashlib.sha256()
        for s, row in enumerate(self.assignment):
            for l, part in enumerate(row):
                h.update(f"{s}:{l}:{','.join(map(str, part.tolist()))};".encode())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"shards": self.shards, "slices": self.slices, "seed": self.seed,
                "sizes": [[int(len(p)) for p in row] for row in self.assignment],
                "deleted": len(self.deleted), "lineage_sha256": self.lineage_sha256()}

    def to_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "slices": self.slices, "seed": self.seed,
                "assignment": [[p.tolist() for p in row] for row in self.assignment],
                "deleted": sorted(self.deleted)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ShardPlan":
        return cls(doc["shards"], doc["slices"], doc["seed"],
                   [[np.asarray(p, dtype=np.int64) for p in row] for row in doc["assignment"]],
                   set(doc.get("deleted", [])))

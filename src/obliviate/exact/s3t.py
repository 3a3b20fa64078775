"""S3T (Chowdhury et al., ICLR 2025): per shard, B orderings ("sequences") of its L slices; position i of a
sequence trains its own LoRA block on the union of the sequence's first i slices with everything else
frozen; a deletion truncates every sequence of the shard before the deleted slice — no training until a
shard has no surviving sequence (arXiv 2406.16257; official code brcsomnath/S3T).

Exactness: the model served for prefix P of shard s is a function of (seed, s, P, the data of P's slices)
alone — the backbone is a seeded, data-free initialisation; block i's initialisation, data order and
dropout are seeded by (seed, s, P[:i+1]); the head (and the input normaliser, fitted on P[0]) is
snapshotted per position and restored with the prefix (pitfall 1: switching LoRA off is not enough).

Block layout (``lora.owners``): on a pretrained transformer (MiniLM) position p trains LoRA on query/value
of its own k = N // L layers only, top-down as the official code — earlier positions' blocks stay frozen,
later positions' do not exist yet. The layers below p's block are then the pretrained, frozen backbone, so
their output is cached per example (``stem_features``) and position p runs only its block and above. Each
cached row is computed alone (batch of one, its own length): a function of that passage and the pretrained
weights, never of which other passages exist; a deletion drops the deleted rows from the cache.
"""
from __future__ import annotations

import copy
import dataclasses
import time
import weakref
from typing import Any

import numpy as np
import torch

from obliviate.distributed import Runtime, run_jobs
from obliviate.exact import lora
from obliviate.exact.ensemble import ShardEnsemble
from obliviate.exact.plan import ShardPlan, derive_seed
from obliviate.training import train

Prefix = tuple[int, ...]


def _key(prefix: Prefix) -> str:
    return "-".join(map(str, prefix))


def build_prefix_model(task, seed: int, rank: int, alpha: float, snapshots: dict[Prefix, dict], prefix: Prefix,
                       dropout: float = 0.0):
    """The shard model for ``prefix``: seeded backbone + the LoRA blocks of every sub-prefix (each snapshot
    holds the adapters of the wrappers its position owns) + the prefix's head."""
    model = task.make_model(derive_seed(seed, "s3t", "backbone"))
    wrappers, _ = lora.inject(model, rank, alpha, dropout)
    for p in range(len(prefix)):
        snap = snapshots[prefix[: p + 1]]
        for i, w in enumerate(wrappers):
            if f"lora{i}.A" in snap:
                w.lora_A.append(torch.nn.Parameter(snap[f"lora{i}.A"].clone()))
                w.lora_B.append(torch.nn.Parameter(snap[f"lora{i}.B"].clone()))
    for w in wrappers:
        w.active = len(w.lora_A)
    if prefix:
        head_state = {k[5:]: v for k, v in snapshots[prefix].items() if k.startswith("rest.")}
        model.load_state_dict(head_state, strict=False)
    return model


def layout_of(model: torch.nn.Module, cfg: dict) -> tuple[str, float]:
    """The block layout and LoRA dropout of ``cfg`` for ``model``: ``auto`` is the paper's blocks with dropout
    0.1 (official ``s3t_vit.py``) on a pretrained transformer, the full-depth adapter without dropout otherwise."""
    layout = lora.resolve_layout(model, cfg.get("layout") or "auto")
    dropout = cfg.get("dropout")
    return layout, (0.1 if layout == "blocks" else 0.0) if dropout is None else float(dropout)


_STEM: "weakref.WeakKeyDictionary[Any, dict[int, dict[int, np.ndarray]]]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def stem_features(task, model: torch.nn.Module, ids: np.ndarray, start: int) -> np.ndarray:
    """``[hidden | mask]`` rows after the frozen pretrained layers below ``start`` for training ids ``ids``,
    right-padded to the longest; each row computed alone and cached per (task, layer, id)."""
    cache = _STEM.setdefault(task, {})
    rows = cache.setdefault(start, {})
    was_training = model.training
    model.eval()
    x_all = task.data.x_train
    for i in (int(i) for i in ids):
        if i in rows:
            continue
        below = max((b for b in cache if b < start and i in cache[b]), default=None)  # resume from a lower layer
        xt = torch.as_tensor(x_all[i:i + 1], dtype=torch.float32)
        if below is None:
            h, _ = model.stem(xt, start)
        else:
            h, _ = model.stem(xt, start, hidden=torch.as_tensor(cache[below][i])[None], begin=below)
        rows[i] = h[0].numpy().copy()
    model.train(was_training)
    width = max([rows[int(i)].shape[0] for i in ids], default=1)
    hidden = rows[int(ids[0])].shape[1] if len(ids) else 0
    out = np.zeros((len(ids), width, hidden + 1), dtype=np.float32)
    for j, i in enumerate(ids):
        r = rows[int(i)]
        out[j, :len(r), :hidden] = r
        out[j, :len(r), hidden] = 1.0
    return out


def forget_features(task, ids) -> None:
    """Drop cached stem rows of deleted ids (derived data of the deleted passages)."""
    for rows in _STEM.get(task, {}).values():
        for i in np.asarray(ids).ravel():
            rows.pop(int(i), None)


def train_prefix(task, plan_slices: list[np.ndarray], prefix: Prefix, snapshots: dict[Prefix, dict], cfg: dict,
                 recipe, seed: int, shard: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Train position len(prefix)-1: its new LoRA block + the head on the union of the prefix's slices."""
    rank, alpha = cfg["rank"], cfg["alpha"]
    parent = prefix[:-1]
    position = len(prefix) - 1
    model = build_prefix_model(task, seed, rank, alpha, snapshots, parent)
    layout, dropout = layout_of(model, cfg)
    wrappers = [m for m in model.modules() if isinstance(m, lora.LoRALinear)]
    for w in wrappers:
        w.dropout = dropout
    head = model.head if hasattr(model, "lora_sites") else lora.linear_layers(model)[-1][2]
    own = lora.owners(wrappers, layout, cfg["slices"], position)
    gen = torch.Generator().manual_seed(derive_seed(seed, "s3t", shard, prefix, "lora"))
    for i in own:
        wrappers[i].add_adapter(gen)
    for w in wrappers:
        w.active = len(w.lora_A)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = ([wrappers[i].lora_A[-1] for i in own] + [wrappers[i].lora_B[-1] for i in own]
                 + list(head.parameters()))
    for p in trainable:
        p.requires_grad_(True)
    x_all, y_all = task.data.x_train, task.data.y_train
    if not parent:  # the normaliser is fitted once, on the first slice of the sequence, then frozen
        first = plan_slices[prefix[0]]
        if len(first) and hasattr(model, "fit_normalizer"):
            model.fit_normalizer(x_all[first], y_all[first])
    ids = np.concatenate([plan_slices[j] for j in prefix])
    net, x = model, None
    start = min(wrappers[i].layer for i in own) if layout == "blocks" and hasattr(model, "from_layer") else 0
    if start > 0:  # below the block: the frozen pretrained backbone, no adapter (cached)
        assert all(w.active == 0 for w in wrappers if w.layer < start)
        net, x = model.from_layer(start), stem_features(task, model, ids, start)
    step_recipe = dataclasses.replace(recipe, lr=cfg["lr"]) if cfg.get("lr") else recipe
    train(net.to(device), x_all[ids] if x is None else x, y_all[ids], step_recipe, task.kind,
          derive_seed(seed, "s3t", shard, prefix, "train"), device,
          description=f"s3t shard {shard} prefix {_key(prefix)}", epochs=cfg["epochs"], fit_normalizer=False)
    snap = {f"lora{i}.A": wrappers[i].lora_A[-1].detach().cpu().clone() for i in own}
    snap.update({f"lora{i}.B": wrappers[i].lora_B[-1].detach().cpu().clone() for i in own})
    head_prefix = _module_name(model, head) + "."
    params = {n for n, _ in model.named_parameters()}
    for name, value in model.state_dict().items():
        if "lora_" in name or (name in params and not name.startswith(head_prefix)):
            continue  # LoRA blocks are stored above; backbone weights are the seeded / pretrained initialisation
        snap[f"rest.{name}"] = value.detach().cpu().clone()  # the head and the normaliser buffers
    return snap


def _module_name(model: torch.nn.Module, target: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def train_shard(task, plan_slices: list[np.ndarray], sequences: list[Prefix], cfg: dict, recipe, seed: int,
                shard: int, device: str = "cpu") -> dict[Prefix, dict]:
    """Every prefix of every sequence of one shard, each trained once (shared prefixes are reused)."""
    snapshots: dict[Prefix, dict] = {}
    for seq in sequences:
        for p in range(1, len(seq) + 1):
            prefix = tuple(seq[:p])
            if prefix not in snapshots:
                snapshots[prefix] = train_prefix(task, plan_slices, prefix, snapshots, cfg, recipe, seed, shard, device)
    return snapshots


class S3TSystem:
    """A trained S3T ensemble: plan, sequences per shard, surviving prefix length per sequence, snapshots."""

    def __init__(self, task, plan: ShardPlan, recipe, seed: int, cfg: dict, sequences: list[list[Prefix]],
                 snapshots: list[dict[Prefix, dict]], lengths: list[list[int]] | None = None,
                 retrain_count: list[int] | None = None):
        self.task, self.plan, self.recipe, self.seed, self.cfg = task, plan, recipe, seed, cfg
        self.sequences = sequences
        self.snapshots = snapshots
        self.lengths = lengths or [[len(q) for q in seqs] for seqs in sequences]
        self.retrain_count = retrain_count or [0] * plan.shards

    @classmethod
    def fit(cls, task, ids: np.ndarray, sequences: list[Prefix], cfg: dict, recipe, seed: int,
            runtime: Runtime) -> "S3TSystem":
        plan = ShardPlan.build(ids, cfg["shards"], cfg["slices"], seed)
        seqs = [[tuple(q) for q in sequences] for _ in range(plan.shards)]
        jobs = [(task, plan.assignment[s], seqs[s], cfg, recipe, seed, s, "cpu") for s in range(plan.shards)]
        return cls(task, plan, recipe, seed, cfg, seqs, run_jobs(train_shard, jobs, runtime))

    # -- serving ------------------------------------------------------------------------------------------
    def best_prefix(self, shard: int) -> Prefix:
        lens = self.lengths[shard]
        if not lens or max(lens) == 0:
            return ()
        i = int(np.argmax(lens))  # longest surviving prefix; ties -> the earliest sequence
        return tuple(self.sequences[shard][i][: lens[i]])

    def shard_model(self, shard: int) -> torch.nn.Module:
        prefix = self.best_prefix(shard)
        return build_prefix_model(self.task, self.seed, self.cfg["rank"], self.cfg["alpha"],
                                  self.snapshots[shard], prefix).eval()

    def live_shards(self) -> list[int]:
        return [s for s in range(self.plan.shards) if self.best_prefix(s)]

    def served_model(self) -> torch.nn.Module:
        return ShardEnsemble([self.shard_model(s) for s in self.live_shards()], self.task.kind, "logits").eval()

    # -- deletion -------------------------------------------------------------------------------------------
    def delete(self, ids: np.ndarray, runtime: Runtime) -> dict[str, Any]:
        """Truncate every sequence of each affected shard before its deleted slice(s); retrain a shard only
        when none of its sequences survives."""
        start = time.perf_counter()
        by_shard, already = self.plan.locate(ids)
        forget_features(self.task, ids)
        deactivated = 0
        dead = []
        for s, hits in sorted(by_shard.items()):
            hit_slices = {l for l, _ in hits}
            self.plan.remove(s, [i for _, i in hits])
            for q, seq in enumerate(self.sequences[s]):
                old = self.lengths[s][q]
                cut = min([seq.index(j) for j in hit_slices if j in seq[:old]], default=old)
                self.lengths[s][q] = cut
                deactivated += old - cut
            if max(self.lengths[s]) == 0:
                dead.append(s)
        jobs = [(self.task, self.plan.assignment[s], self.sequences[s], self.cfg, self.recipe, self.seed, s, "cpu")
                for s in dead]
        reprocessed = 0
        retrained_positions = 0
        for s, snaps in zip(dead, run_jobs(train_shard, jobs, runtime)):
            self.snapshots[s] = snaps
            self.lengths[s] = [len(q) for q in self.sequences[s]]
            self.retrain_count[s] += 1
            reprocessed += sum(len(p) for p in self.plan.assignment[s])
            retrained_positions += len(snaps)
        # drop snapshots no surviving prefix uses: they were trained on deleted data
        for s in by_shard:
            keep = {tuple(q[:p]) for q, n in zip(self.sequences[s], self.lengths[s]) for p in range(1, n + 1)}
            self.snapshots[s] = {k: v for k, v in self.snapshots[s].items() if k in keep}
        n_total = self.plan.n_alive + len(self.plan.deleted)
        return {"scheme": "s3t", "deleted": int(sum(len(h) for h in by_shard.values())),
                "already_deleted": already, "shards_touched": sorted(int(s) for s in by_shard),
                "models_deactivated": int(deactivated), "models_retrained": int(retrained_positions),
                "retrained_shards": sorted(int(s) for s in dead),
                "examples_reprocessed": int(reprocessed), "fraction_reprocessed": reprocessed / max(1, n_total),
                "budget_left": self.budget(), "time_s": time.perf_counter() - start, "plan": self.plan.summary()}

    def verify(self, runtime: Runtime) -> dict[str, Any]:
        """Retrain each live shard's served prefix from scratch on its surviving data (same plan, recipe, seeds)
        and compare with the served model parameter for parameter: the evidence that the deletion was exact."""
        start = time.perf_counter()
        live = self.live_shards()
        prefixes = [self.best_prefix(s) for s in live]
        jobs = [(self.task, self.plan.assignment[s], [p], self.cfg, self.recipe, self.seed, s, "cpu")
                for s, p in zip(live, prefixes)]
        worst = 0.0
        for s, prefix, snaps in zip(live, prefixes, run_jobs(train_shard, jobs, runtime)):
            fresh = build_prefix_model(self.task, self.seed, self.cfg["rank"], self.cfg["alpha"], snaps, prefix)
            served = self.shard_model(s).state_dict()
            for k, v in fresh.state_dict().items():
                diff = (v.double() - served[k].double()).abs().max().item() if v.numel() else 0.0
                worst = max(worst, diff)
        return {"verified": worst == 0.0, "max_abs_diff": worst, "shards_checked": len(live),
                "time_s": time.perf_counter() - start}

    def budget(self) -> list[dict[str, Any]]:
        """Per shard: surviving sequences and the served prefix length."""
        return [{"shard": s, "sequences_alive": int(sum(1 for n in self.lengths[s] if n > 0)),
                 "served_prefix": len(self.best_prefix(s))} for s in range(self.plan.shards)]

    # -- persistence ----------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"s{s}/p{_key(prefix)}/{name}": v for s, snaps in enumerate(self.snapshots)
                for prefix, snap in snaps.items() for name, v in snap.items()}

    def meta(self) -> dict[str, Any]:
        return {"scheme": "s3t", "plan": self.plan.to_json(), "cfg": self.cfg,
                "sequences": [[list(q) for q in seqs] for seqs in self.sequences],
                "lengths": self.lengths, "retrain_count": self.retrain_count}

    @classmethod
    def restore(cls, task, recipe, seed: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "S3TSystem":
        plan = ShardPlan.from_json(meta["plan"])
        snapshots: list[dict[Prefix, dict]] = [{} for _ in range(plan.shards)]
        for key, v in tensors.items():
            s, p, name = key.split("/", 2)
            prefix = tuple(int(t) for t in p[1:].split("-"))
            snapshots[int(s[1:])].setdefault(prefix, {})[name] = v
        seqs = [[tuple(q) for q in row] for row in meta["sequences"]]
        return cls(task, plan, recipe, seed, meta["cfg"], seqs, snapshots, meta["lengths"], meta["retrain_count"])

    def copy(self) -> "S3TSystem":
        return S3TSystem(self.task, copy.deepcopy(self.plan), self.recipe, self.seed, dict(self.cfg),
                         [list(r) for r in self.sequences], [dict(d) for d in self.snapshots],
                         [list(r) for r in self.lengths], list(self.retrain_count))

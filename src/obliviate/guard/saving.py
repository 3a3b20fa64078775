"""A saved GUARD beside its model: ``guard.safetensors`` (the detector's weights and standardisation, the
retrieval keys' embeddings and owners) and ``guard.json`` (format, config, detector shape and metrics, the key
phrases per forget record, the sha256 of ``guard.safetensors`` and of the base weights it was trained on).
Never a pickle: the tensors are safetensors, the rest is JSON.

GUARD is suppression — the weights still hold what it suppresses — so a saved guard is only useful next to those
weights: :func:`load_guarded` refuses a guard whose recorded base weights are not the directory's. The key
phrases are the forgotten records' own names, answers and rare words (that is what decoding forbids): treat a
guarded model directory as holding that content.

>>> model.save_pretrained(d)                      # a GuardedModel: base weights + guard files  # doctest: +SKIP
>>> guarded = load_guarded(d, AutoModelForCausalLM.from_pretrained(d), tokenizer)          # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from obliviate.atomic import atomic_write
from obliviate.errors import IntegrityError, ObliviateError

GUARD_FORMAT = "obliviate.guard/1"
GUARD_JSON = "guard.json"
GUARD_TENSORS = "guard.safetensors"


def _sha256(path: Path) -> str:
    from obliviate.models.store import sha256_file

    return sha256_file(path)


def base_weights(path: Path) -> dict[str, str]:
    """sha256 per safetensors weights file of a model directory (the guard's own file excluded)."""
    return {f.name: _sha256(f) for f in sorted(Path(path).glob("*.safetensors")) if f.name != GUARD_TENSORS}


def save_guard(guard, path: str | Path) -> dict[str, Any]:
    """Write ``guard`` into the model directory ``path`` (the base model already saved there); returns the JSON
    document written."""
    from safetensors.torch import save as save_tensors

    from obliviate.config import as_dict

    path = Path(path)
    det = guard.detector
    linear = [m for m in det.net if isinstance(m, torch.nn.Linear)]
    tensors = {f"detector.{k}": v.detach().float().cpu().contiguous() for k, v in det.state_dict().items()}
    tensors["retrieval.keys"] = guard._key_emb.detach().float().cpu().contiguous()
    tensors["retrieval.owner"] = torch.as_tensor(guard._key_owner, dtype=torch.int64).contiguous()
    blob = save_tensors(tensors, metadata={"format": GUARD_FORMAT})
    atomic_write(path / GUARD_TENSORS, blob)
    doc = {"format": GUARD_FORMAT, "method": "guard", "guarantee": "suppression",
           "config": as_dict(guard.config),
           "detector": {"dim": int(linear[0].in_features), "hidden": int(linear[0].out_features),
                        "dropout": float(guard.config.detector_dropout), "metrics": guard.detector_metrics},
           "n_forget": guard.n_forget, "subjects": [r.subject for r in guard.forget], "phrases": guard.bank.phrases,
           "tensors": {"file": GUARD_TENSORS, "sha256": _sha256(path / GUARD_TENSORS)},
           "base_weights": base_weights(path),
           "note": "the weights are the unguarded model's; GUARD acts at generation time only (obliviate.guard."
                   "load_guarded restores it); the phrases are the forgotten records' own key phrases"}
    atomic_write(path / GUARD_JSON, json.dumps(doc, indent=2, default=str))
    return doc


def remove_saved_guard(path: str | Path) -> None:
    """Delete the guard files of a model directory (a model saved without a guard must not inherit a stale one)."""
    for name in (GUARD_JSON, GUARD_TENSORS):
        p = Path(path) / name
        if p.is_file():
            p.unlink()


def saved_guard_info(path: str | Path) -> dict[str, Any] | None:
    """``{"file", "sha256"}`` of the saved guard's tensors in ``path``, or None when there is none."""
    p = Path(path) / GUARD_JSON
    if not p.is_file():
        return None
    doc = _read_json(p)
    return dict(doc.get("tensors") or {}) or None


def _read_json(p: Path) -> dict[str, Any]:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ObliviateError(f"{p} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise ObliviateError(f"{p} is not a JSON object")
    return doc


def load_guarded(model_dir: str | Path, model, tokenizer, embedder=None):
    """``model`` (loaded from ``model_dir``) wrapped as a :class:`~obliviate.guard.core.GuardedModel` when the
    directory holds a saved guard, else ``model`` unchanged. The guard's tensors must match the sha256 in
    ``guard.json`` and the directory's weights the ones it was trained on (:class:`IntegrityError` otherwise)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from obliviate.config import build_config
    from obliviate.guard.config import GuardConfig
    from obliviate.guard.core import Guard

    d = Path(model_dir)
    meta_path = d / GUARD_JSON
    if not meta_path.is_file():
        return model
    doc = _read_json(meta_path)
    if doc.get("format") != GUARD_FORMAT:
        raise ObliviateError(f"{meta_path} records a guard without its detector (format "
                             f"{doc.get('format')!r}, not {GUARD_FORMAT!r}); save the guarded model again")
    tensors = d / str((doc.get("tensors") or {}).get("file", GUARD_TENSORS))
    if tensors.name != GUARD_TENSORS or not tensors.is_file():
        raise ObliviateError(f"{meta_path} names {tensors.name}, which is not in {d}")
    recorded = str((doc.get("tensors") or {}).get("sha256", ""))
    actual = _sha256(tensors)
    if recorded.lower() != actual:
        raise IntegrityError(f"sha256 mismatch for {tensors}: guard.json records {recorded[:12] or '(nothing)'}…, "
                             f"file {actual[:12]}…")
    want = doc.get("base_weights") or {}
    have = base_weights(d)
    if want and want != {k: have.get(k) for k in want}:
        raise IntegrityError(f"{meta_path} was saved with other model weights than those in {d}: a guard's "
                             "detector reads the hidden states of the model it was trained on")
    try:
        state = load_file(str(tensors))
        config = build_config(GuardConfig, doc["config"])
        det_meta = doc["detector"]
        phrases = [list(map(str, p)) for p in doc["phrases"]]
        keys, owner = state.pop("retrieval.keys"), state.pop("retrieval.owner")
        det_state = {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}
        return Guard.restore(model, tokenizer, config, det_state, int(det_meta["dim"]), int(det_meta["hidden"]),
                             phrases, keys, owner, metrics=det_meta.get("metrics") or {},
                             subjects=doc.get("subjects"), embedder=embedder).wrap()
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ObliviateError(f"cannot restore the guard saved in {d}: {first}") from None

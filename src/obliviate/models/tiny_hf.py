"""Tiny, randomly initialised causal LMs of the model families users bring (GPT-2, Llama, Qwen2, GPT-NeoX, Phi,
Mistral), built locally from each family's real transformers class — nothing is downloaded. They are for tests:
the same module names, block lists, attention layouts (grouped-query attention for Llama / Qwen2 / Mistral,
fused ``query_key_value`` for NeoX, partial rotary embeddings for NeoX and Phi) and weight tying as the real
checkpoints, at some tens of thousands of parameters.

>>> from obliviate.models.tiny_hf import TINY_CHAT_TEMPLATE, save_tiny_dir, tiny_causal_lm
>>> from obliviate.models.tiny_lm import corpus_tokenizer
>>> from obliviate.tasks.text import TextData, TextRecord
>>> tok = corpus_tokenizer(TextData([TextRecord("a", "Ada Stone was born in Lyon.")], []))
>>> type(tiny_causal_lm("llama", tok)).__name__
'LlamaForCausalLM'
>>> import tempfile
>>> d = save_tiny_dir("phi", tempfile.mkdtemp() + "/phi", tok, chat_template=TINY_CHAT_TEMPLATE)
>>> from obliviate.tasks.hf import check_model_dir
>>> check_model_dir(d).config.model_type
'phi'
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

FAMILIES = ("gpt2", "llama", "qwen2", "gpt_neox", "phi", "mistral")

#: A small chat template (Zephyr-like markers): a chat-formatted prompt differs from a plain one. Its markers are
#: added to the tokenizer as special tokens by :func:`save_tiny_dir`, so each is one token, never the unknown one.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_MARKER = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def _config(family: str, vocab: int, ids: dict, n_layer: int, hidden: int, heads: int, context: int):
    """The family's transformers config at the given size, dropout off (a random model has nothing to regularise;
    training is then deterministic under a seed)."""
    import transformers as tf

    inner = 2 * hidden
    common = dict(vocab_size=vocab, **ids)
    if family == "gpt2":
        return tf.GPT2Config(n_positions=context, n_embd=hidden, n_layer=n_layer, n_head=heads, n_inner=inner,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=n_layer, num_attention_heads=heads,
                                intermediate_size=inner, max_position_embeddings=context, attention_dropout=0.0,
                                hidden_dropout=0.0, **common)
    if family == "phi":
        return tf.PhiConfig(hidden_size=hidden, intermediate_size=inner, num_hidden_layers=n_layer,
                            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=context,
                            resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, **common)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
    # grouped-query attention, as the real Llama-3 / Qwen2 / Mistral checkpoints: fewer key/value heads
    return cls(hidden_size=hidden, intermediate_size=inner, num_hidden_layers=n_layer, num_attention_heads=heads,
               num_key_value_heads=max(1, heads // 2), max_position_embeddings=context, attention_dropout=0.0,
               **common)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def tiny_causal_lm(family: str, tokenizer, *, n_layer: int = 2, hidden: int = 32, heads: int = 2,
                   context: int = 128, seed: int = 0):
    """A freshly initialised ``family`` causal LM (its real class: ``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
    ``GPTNeoXForCausalLM``, ``PhiForCausalLM``, ``MistralForCausalLM``, ``GPT2LMHeadModel``), float32, in eval
    mode, sized to ``tokenizer``'s vocabulary (``len(tokenizer)``, added tokens included) with its BOS / EOS /
    PAD ids; MLP width 2·``hidden``; weight tying as the family's config defaults. The weights depend only on
    ``seed`` (drawn under a forked RNG: the global one is left as it was).

    >>> from obliviate.models.tiny_lm import corpus_tokenizer
    >>> from obliviate.tasks.text import TextData, TextRecord
    >>> tok = corpus_tokenizer(TextData([TextRecord("a", "Ada Stone was born in Lyon.")], []))
    >>> m = tiny_causal_lm("gpt_neox", tok, n_layer=3)
    >>> type(m).__name__, len(m.gpt_neox.layers), m.config.vocab_size == len(tok)
    ('GPTNeoXForCausalLM', 3, True)
    """
    import transformers as tf

    _check_family(family)
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}) with an even head size "
                         "(rotary embeddings rotate pairs of dimensions)")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    config = _config(family, len(tokenizer), ids, n_layer, hidden, heads, context)
    cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM,
           "gpt_neox": tf.GPTNeoXForCausalLM, "phi": tf.PhiForCausalLM, "mistral": tf.MistralForCausalLM}[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.float().eval()


def chat_markers(template: str) -> list[str]:
    """The ``<|…|>`` markers a chat template writes literally, in order of first appearance."""
    return list(dict.fromkeys(_MARKER.findall(template)))


def save_tiny_dir(family: str, path: str | Path, tokenizer, *, chat_template: str | None = None, seed: int = 0,
                  **sizes) -> str:
    """Build :func:`tiny_causal_lm` (``sizes``: its ``n_layer``, ``hidden``, ``heads``, ``context``) and save it
    with its tokenizer as a Hugging Face model directory the ``hf`` task loads (safetensors weights and a
    ``model.safetensors.sha256``, via :func:`~obliviate.models.tiny_lm.save_hf_dir`); return the directory.

    ``chat_template`` (e.g. :data:`TINY_CHAT_TEMPLATE`) is set on a copy of the tokenizer (the caller's is left
    as it was), and the ``<|…|>`` markers it writes are added to that copy as special tokens before the model is
    sized, so ``--set template=chat`` prompts tokenise to known ids.

    The saved tokenizer is reloaded as the ``hf`` task will (:func:`obliviate.tasks.hf.load_tokenizer`) and must
    give back every token; a ValueError otherwise.

    >>> from obliviate.models.tiny_lm import corpus_tokenizer
    >>> from obliviate.tasks.text import TextData, TextRecord
    >>> import tempfile
    >>> tok = corpus_tokenizer(TextData([TextRecord("a", "Ada Stone was born in Lyon.")], []))
    >>> d = save_tiny_dir("mistral", tempfile.mkdtemp() + "/m", tok, chat_template=TINY_CHAT_TEMPLATE, n_layer=1)
    >>> import json, os
    >>> json.load(open(os.path.join(d, "config.json")))["architectures"]
    ['MistralForCausalLM']
    """
    from obliviate.models.tiny_lm import save_hf_dir

    _check_family(family)
    unknown = sorted(set(sizes) - {"n_layer", "hidden", "heads", "context"})
    if unknown:
        raise TypeError(f"save_tiny_dir: unknown size argument {unknown[0]!r}; expected n_layer, hidden, heads or "
                        "context")
    if chat_template is not None:
        tokenizer = copy.deepcopy(tokenizer)
        markers = [m for m in chat_markers(chat_template) if m not in tokenizer.get_vocab()]
        if markers:
            tokenizer.add_tokens(markers, special_tokens=True)
        tokenizer.chat_template = chat_template
    model = tiny_causal_lm(family, tokenizer, seed=seed, **sizes)
    save_hf_dir(model, tokenizer, path)
    _check_reload(family, tokenizer, path)
    return str(path)


def _check_reload(family: str, tokenizer, path) -> None:
    """The tokenizer the ``hf`` task will load from ``path`` reproduces every token of ``tokenizer`` (plain
    AutoTokenizer would load a ``qwen2`` directory as ``Qwen2Tokenizer`` and garble a word-level vocabulary)."""
    from obliviate.tasks.hf import load_tokenizer

    loaded = load_tokenizer(path)
    special = set(tokenizer.all_special_ids)
    words = [tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special]
    for word, ids in zip(words, loaded(words, add_special_tokens=False)["input_ids"]):
        if loaded.decode(ids) != word:
            raise ValueError(f"{family}: the saved tokenizer reloads as {type(loaded).__name__}, which turns "
                             f"{word!r} into {loaded.decode(ids)!r}")


__all__ = ["FAMILIES", "TINY_CHAT_TEMPLATE", "tiny_causal_lm", "save_tiny_dir", "chat_markers"]

"""The tiny causal LM of the authors task: a byte-level BPE tokenizer trained on the corpus (``tokenizers``,
wrapped as a ``PreTrainedTokenizerFast``) and a small ``GPT2LMHeadModel`` trained from scratch.

Both are ordinary Hugging Face objects: ``save_pretrained`` writes a model directory (safetensors) that any
HF tool, and obliviate's ``hf`` task, can load.
"""
from __future__ import annotations

from pathlib import Path

SPECIAL = "<|endoftext|>"


def corpus_texts(data) -> list[str]:
    """Every string the models will read or score: documents, questions, answers and their variants."""
    from obliviate.lm import QA_PROMPT

    out = []
    for r in [*data.train, *data.holdout]:
        out.append(r.text)
        for q in r.qa:
            out += [q.question, q.answer, q.paraphrased or "", *q.perturbed]
        # the prompt layouts themselves (QA template, blank-line separators): a word-level vocabulary built from
        # the contents alone would map "Question", "Answer" and newlines to the unknown token
        out.append(r.text + "\n\n" + "\n\n".join(f"{QA_PROMPT.format(question=q.question)} {q.answer}" for q in r.qa))
    out += [f"{q.question} {q.answer}" for q in data.icl]
    return [v for t in out if t for v in (t, " " + t)]  # a word after a space is another word-level token


def corpus_tokenizer(data, vocab_size: int = 4096, kind: str = "word"):
    """A tokenizer trained on the whole corpus (train and holdout authors, so that original and oracle share one
    vocabulary; no weights are trained on holdout text). Deterministic for the same corpus.

    ``word``: byte-level pre-tokenisation (GPT-2's split into words with their leading space) and one token per
    distinct word (a tiny model memorises names and facts several times faster than over BPE pieces; decoding
    is exact). ``bpe``: byte-level BPE with ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=SPECIAL))
        trainer = trainers.WordLevelTrainer(vocab_size=1 << 30, min_frequency=1, special_tokens=[SPECIAL],
                                            show_progress=False)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        from obliviate.errors import ConfigError

        raise ConfigError(f"tokenizer must be word or bpe, got {kind!r}")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_texts(data), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL,
                                   unk_token=SPECIAL, clean_up_tokenization_spaces=False)


def tiny_gpt2(tokenizer, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 256):
    """A freshly initialised GPT-2 (no dropout: the task is to memorise) sized for the tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if n_embd % n_head:
        from obliviate.errors import ConfigError

        raise ConfigError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def save_hf_dir(model, tokenizer, path: str | Path, max_shard_size: int | str = "5GB") -> str:
    """Write an ordinary HF model directory (safetensors + tokenizer) with a ``<file>.sha256`` beside every weights
    file; return the weights' sha256 (for sharded weights, of their ``sha256sum`` listing, as
    :meth:`obliviate.tasks.hf.ModelDir.weights_sha256`). Weights over ``max_shard_size`` (the Hugging Face Hub's
    5 GB by default) are split into shards with a ``model.safetensors.index.json``; the weights of an earlier save
    in the directory are removed first, so a stale index or single file never shadows the new weights."""
    import hashlib
    import json

    from obliviate.atomic import atomic_write
    from obliviate.models.store import sha256_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for stale in [*path.glob("model*.safetensors"), *path.glob("model*.safetensors.sha256"),
                  path / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    model.save_pretrained(path, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(path)
    index = path / "model.safetensors.index.json"
    names = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    digests = []
    for name in names:
        weights = path / name
        digest = sha256_file(weights)
        atomic_write(Path(f"{weights}.sha256"), f"{digest}  {name}\n")
        digests.append((name, digest))
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{d}  {n}\n" for n, d in digests).encode()).hexdigest()

"""The ``hf`` task: the user's own Hugging Face causal LM and the texts to forget, as JSONL files.

``--set model=DIR`` is a local model directory (``config.json``, safetensors weights, tokenizer files) of any
causal LM transformers knows (GPT-2, Llama, OLMo, Pythia, Qwen, …; never a directory's own code). That model
is the original: it is given, never trained. ``--set oracle=DIR`` optionally names a model trained without
the forget texts (MUSE's ``*_retrain`` models) used as the retrain oracle; without one, oracle-relative
metrics are reported as unavailable.

Files (UTF-8, one JSON object a line, blank lines skipped):

- ``forget`` / ``retain`` / ``holdout`` — text records: ``{"text": "...", "subject": "..."}``; ``text`` is a
  non-empty string, ``subject`` optional (default: ``<file role>:<line>``, e.g. ``forget:17``, so each line is
  its own subject). Example ids 0..nf−1 are the forget file's records in file order, then the retain file's;
  holdout records are never trained on and serve as PrivLeak's non-members (without ``holdout`` PrivLeak is
  unavailable).
- ``forget_qa`` / ``retain_qa`` / ``icl`` — question–answer pairs: ``{"question": "...", "answer": "..."}``
  plus optional ``subject``, ``paraphrased`` (the answer reworded) and ``perturbed`` (a list of wrong
  answers in the same wording; both needed for the TOFU truth ratio). A pair with a ``subject`` joins the
  first record of that subject in the forget (retain) file; a pair without one is a record of its own
  (empty text, subject ``forget_qa:<line>``), placed after that side's text records. ``icl`` pairs are the
  few-shot examples of the KnowMem prompts (the first ``icl_shots``; MUSE's ``knowmem/*_icl`` files; their
  ``subject`` is ignored); without ``icl`` the prompts are zero-shot. QA pairs are evaluated, not trained on:
  a method's forget and retain data are the texts, unless ``--set train_qa=true`` (a model fine-tuned on the
  pairs themselves, as TOFU's). ``--set template=…`` sets their prompt layout, for scoring and training alike.

Any other key, a non-string value, a line that is not a JSON object or a file without records is an error
naming the file and the line.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from obliviate.config import Validated
from obliviate.errors import ConfigError, IntegrityError, ObliviateError
from obliviate.tasks import register_task
from obliviate.tasks.files import field_str
from obliviate.tasks.text import QA, LanguageTask, TextData, TextRecord

TEXT_KEYS = ("text", "subject")
QA_KEYS = ("question", "answer", "subject", "paraphrased", "perturbed")
#: files of a model directory that are pickles: never loaded
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
#: small files of a model directory that shape tokenisation or the config (hashed into the fingerprint)
_META_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")


@dataclass
class LoadOptions(Validated):
    """How a given model is loaded and scored: the options every task on a given model directory shares."""

    eval_batch_size: int = field(default=32, metadata={
        "help": "sequences per forward pass when scoring and generating for the metrics", "min": 1})
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "dtype the model (and oracle) weights are loaded in: auto = as stored (a bf16 checkpoint stays "
                "bf16: half the memory of fp32)"})


@dataclass
class HFOptions(LoadOptions):
    model: str = field(default="", metadata={
        "help": "local Hugging Face causal LM directory (config.json, safetensors weights, tokenizer); the "
                "original model, never trained (required)"})
    forget: str = field(default="", metadata={
        "help": "JSONL of the texts to forget, one {\"text\": ..., \"subject\": ...} a line (required)"})
    retain: str = field(default="", metadata={
        "help": "JSONL of texts the model keeps, same format (required)"})
    holdout: str = field(default="", metadata={
        "help": "JSONL of texts the model never saw, same format (optional; needed for PrivLeak)"})
    forget_qa: str = field(default="", metadata={
        "help": "JSONL of QA pairs about the forget texts, one {\"question\", \"answer\", \"subject\"?, "
                "\"paraphrased\"?, \"perturbed\"?} a line (optional; KnowMem / TOFU metrics)"})
    retain_qa: str = field(default="", metadata={
        "help": "JSONL of QA pairs about the retain texts, same format (optional)"})
    icl: str = field(default="", metadata={
        "help": "JSONL of few-shot QA examples for KnowMem prompts, about no forget/retain subject "
                "(optional; none = zero-shot)"})
    oracle: str = field(default="", metadata={
        "help": "local directory of the same model trained without the forget texts (e.g. MUSE's *_retrain); "
                "the retrain oracle (optional: nothing can retrain a given model)"})
    icl_shots: int = field(default=2, metadata={"help": "few-shot QA pairs in KnowMem prompts (from the icl file)",
                                                "min": 0})
    max_length: int = field(default=0, metadata={
        "help": "longest sequence in tokens; longer documents are split into chunks of this many tokens "
                "(0 = the model's context length)", "min": 0})
    template: str = field(default="plain", metadata={
        "help": "prompt layout of QA pairs: plain (Question: … Answer:), muse, llama2 ([INST] … [/INST]), chat "
                "(the tokenizer's chat template) or a JSON template file"})
    train_qa: bool = field(default=False, metadata={
        "help": "QA pairs are also training data of the methods (the model was fine-tuned on them, as in TOFU); "
                "by default they are only evaluated"})

    def validate(self) -> None:
        for key, what in (("model", "DIR (a Hugging Face causal LM directory)"), ("forget", "forget.jsonl"),
                          ("retain", "retain.jsonl")):
            if not getattr(self, key):
                raise ConfigError(f"task hf needs --set {key}={what}")


# -- JSONL ------------------------------------------------------------------------------------------------------

def _read_jsonl(path: str, role: str, keys: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """(line number, object) of every non-blank line, and the file's sha256; one-line errors naming the line."""
    p = Path(path)
    if not p.is_file():
        raise ObliviateError(f"{role} file not found: {p}")
    blob = p.read_bytes()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ObliviateError(f"{role} file {p} is not UTF-8 text (byte {exc.start})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ObliviateError(f"{p} line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ObliviateError(f"{p} line {n}: expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(keys))
        if unknown:
            raise ObliviateError(f"{p} line {n}: unknown key{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(map(repr, unknown))}; valid keys: {', '.join(keys)}")
        out.append((n, obj))
    if not out:
        raise ObliviateError(f"{role} file {p} has no records (it is empty or only blank lines)")
    return out, hashlib.sha256(blob).hexdigest()


def _text_records(path: str, role: str) -> tuple[list[TextRecord], str]:
    rows, digest = _read_jsonl(path, role, TEXT_KEYS)
    out = []
    for n, obj in rows:
        where = f"{Path(path)} line {n}"
        text = field_str(obj, "text", where, required=True)
        subject = field_str(obj, "subject", where, required=False) or f"{role}:{n}"
        out.append(TextRecord(subject=subject, text=text))
    return out, digest


def _qa_pairs(path: str, role: str) -> tuple[list[tuple[int, str | None, QA]], str]:
    rows, digest = _read_jsonl(path, role, QA_KEYS)
    out = []
    for n, obj in rows:
        where = f"{Path(path)} line {n}"
        question = field_str(obj, "question", where, required=True)
        answer = field_str(obj, "answer", where, required=True)
        subject = field_str(obj, "subject", where, required=False)
        paraphrased = field_str(obj, "paraphrased", where, required=False)
        perturbed = obj.get("perturbed", [])
        if not isinstance(perturbed, list) or not all(isinstance(w, str) and w.strip() for w in perturbed):
            raise ObliviateError(f"{where}: \"perturbed\" must be a list of non-empty strings")
        out.append((n, subject, QA(question=question, answer=answer, paraphrased=paraphrased,
                                   perturbed=tuple(perturbed))))
    return out, digest


def _attach(records: list[TextRecord], qa_path: str, qa_role: str, text_path: str) -> tuple[list[TextRecord], str]:
    """``records`` with the QA pairs of ``qa_path`` attached by subject, then one record per subject-less pair."""
    pairs, digest = _qa_pairs(qa_path, qa_role)
    first = {}
    for i, r in enumerate(records):
        first.setdefault(r.subject, i)
    attached: list[list[QA]] = [list(r.qa) for r in records]
    extra = []
    for n, subject, qa in pairs:
        if subject is None:
            extra.append(TextRecord(subject=f"{qa_role}:{n}", text="", qa=(qa,)))
        elif subject in first:
            attached[first[subject]].append(qa)
        else:
            raise ObliviateError(f"{Path(qa_path)} line {n}: subject {subject!r} matches no record of {text_path}; "
                                 "drop \"subject\" to make the pair a record of its own")
    out = [TextRecord(r.subject, r.text, tuple(q), r.attributes) for r, q in zip(records, attached)]
    return out + extra, digest


# -- model directories ---------------------------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a large weights file is hashed once."""
    from obliviate.models.store import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


@dataclass
class ModelDir:
    """A checked model directory: config parsed, a causal LM, safetensors weights present (not yet hashed)."""

    path: Path
    config: Any
    weights: list[Path]

    def weights_sha256(self) -> str:
        """sha256 of the single weights file; for sharded weights, of their ``sha256sum`` listing."""
        digests = [(w.name, _file_sha256(w)) for w in self.weights]
        if len(digests) == 1:
            return digests[0][1]
        return hashlib.sha256("".join(f"{d}  {name}\n" for name, d in digests).encode()).hexdigest()

    def verify(self) -> str:
        """Check every weights file against a ``<file>.sha256`` beside it (when there is one); return the digest."""
        for w in self.weights:
            side = Path(f"{w}.sha256")
            if side.is_file():
                words = side.read_text().split()
                recorded = words[0].lower() if words else ""
                actual = _file_sha256(w)
                if recorded != actual:
                    raise IntegrityError(f"sha256 mismatch for {w}: recorded {recorded[:12] or '(nothing)'}…, "
                                         f"file {actual[:12]}…")
        return self.weights_sha256()

    def meta_sha256(self) -> str:
        """sha256 over the directory's small files (config, tokenizer, generation config)."""
        h = hashlib.sha256()
        for f in sorted(self.path.iterdir()):
            if f.is_file() and f.suffix in _META_SUFFIXES:
                h.update(f"{f.name}\0{_file_sha256(f)}\n".encode())
        return h.hexdigest()

    def load(self, dtype: str = "auto"):
        import torch
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from obliviate.training import progress_enabled

        self.verify()
        bars = hf_logging.is_progress_bar_enabled()
        if bars and not progress_enabled():  # transformers' loading bar only where obliviate shows its own
            hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(self.path), config=copy.deepcopy(self.config),
                                                         local_files_only=True, use_safetensors=True,
                                                         trust_remote_code=False,
                                                         dtype={"fp32": torch.float32, "bf16": torch.bfloat16,
                                                                "fp16": torch.float16}.get(dtype, "auto"))
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
            raise ObliviateError(f"cannot load the model in {self.path}: {_first_line(exc)}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return model.eval()


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[0] if lines else type(exc).__name__


def check_model_dir(path: str, what: str = "model") -> ModelDir:
    """Everything about a model directory that can be checked without reading its weights."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    d = Path(path).expanduser().absolute()
    if not d.is_dir():
        raise ObliviateError(f"{what} directory not found: {d}" if not d.exists() else
                             f"{what} must be a model directory, not a file: {d}")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ObliviateError(f"{what} directory {d} has no config.json (not a Hugging Face model directory)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ObliviateError(f"{cfg_path} is not valid JSON ({_first_line(exc)})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise ObliviateError(f"{cfg_path} has no \"model_type\"")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ObliviateError(f"{what} in {d} has model_type {model_type!r}, which transformers does not know "
                             "(obliviate never runs a model directory's own code)")
    try:
        config = AutoConfig.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ObliviateError(f"cannot read {cfg_path}: {_first_line(exc)}") from None
    # a causal LM: transformers has a causal-LM class for the type; an encoder type (BERT, RoBERTa, BART, …) only
    # when configured as a decoder; architectures, when recorded, name a causal-LM class
    causal_cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    named = any(a == causal_cls or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    decoder = bool(getattr(config, "is_decoder", False)) or causal_cls in archs
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False)
    if causal_cls is None or (encoder and not decoder) or (archs and not named and not decoder):
        detail = f"model_type {model_type}" + (f", architectures {', '.join(archs)}" if archs else "")
        raise ObliviateError(f"{what} in {d} is not a causal language model ({detail})")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ObliviateError(f"{index} is not a safetensors index (no \"weight_map\")") from None
        weights = [d / s for s in shards]
        missing = [w.name for w in weights if not w.is_file()]
        if missing:
            raise ObliviateError(f"{what} directory {d} lacks the weights shard {missing[0]} named in {index.name}")
    elif (d / "model.safetensors").is_file():
        weights = [d / "model.safetensors"]
    else:
        pickled = [n for n in PICKLED if (d / n).exists()] + sorted(
            f.name for f in d.glob("*.bin") if f.name not in PICKLED) + sorted(f.name for f in d.glob("*.pt*"))
        if pickled:
            raise ObliviateError(f"{what} directory {d} has only pickled weights ({pickled[0]}); obliviate never "
                                 "loads pickled weights; convert to safetensors (model.save_pretrained(dir, "
                                 "safe_serialization=True))")
        if (d / "adapter_config.json").is_file():
            raise ObliviateError(f"{what} directory {d} holds a PEFT adapter, not a model; merge it into its base "
                                 "model and save that (merge_and_unload, save_pretrained)")
        raise ObliviateError(f"{what} directory {d} has no model.safetensors (nor model.safetensors.index.json)")
    _check_safetensors(weights)
    return ModelDir(d, config, weights)


def _check_safetensors(files: list[Path]) -> None:
    """Each weights file opens as safetensors: its header parses and covers the file (a truncated or corrupt file
    fails here with one line, not inside transformers after the config was accepted). Reads the headers only."""
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ObliviateError(f"{f} is not a readable safetensors file (truncated or corrupt?): "
                                 f"{_first_line(exc)}") from None


def _generic_tokenizer(d: Path) -> bool:
    """The directory's tokenizer_config.json names the generic fast tokenizer (a tokenizer.json of any kind,
    e.g. word-level), which must be loaded as such, not as the model type's own tokenizer class."""
    cfg = d / "tokenizer_config.json"
    if not (cfg.is_file() and (d / "tokenizer.json").is_file()):
        return False
    try:
        name = json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return name in ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(d: Path):
    """The tokenizer of a model directory, as saved: the generic fast tokenizer when tokenizer_config.json names
    it (AutoTokenizer would rebuild some model types' own class from the vocabulary — qwen2's byte-level BPE —
    and garble, e.g., a word-level one), else AutoTokenizer's choice; never a directory's own code."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if _generic_tokenizer(Path(d)):
            return PreTrainedTokenizerFast.from_pretrained(str(d), local_files_only=True)
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ObliviateError(f"cannot load the tokenizer in {d}: {_first_line(exc)}") from None


def context_length(config) -> int | None:
    v = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(v) if v else None


# -- a task around a given model ------------------------------------------------------------------------------------

class GivenModelTask(LanguageTask):
    """A language task whose original is a local model directory (``options.model``), never trained, with an
    optional given oracle (``options.oracle``). Subclasses read their data in :meth:`load_data` (recording each
    file's sha256 in ``self.file_sha256``) and set ``self.forget_ids``, the ids the ``forget-file`` spec selects."""

    #: options that name files: hashed by content (``file_sha256``), never by path
    path_options: tuple[str, ...] = ("model", "oracle")
    default_forget = "forget-file"
    #: OpenUnlearning's MIA suite is part of the evaluation (forget vs holdout samples, when there are both)
    mia_suite = True

    def load(self) -> TextData:
        o = self.options
        self.model_dir = check_model_dir(o.model, "model")
        self.oracle_dir = check_model_dir(o.oracle, "oracle") if getattr(o, "oracle", "") else None
        context = context_length(self.model_dir.config)
        if getattr(o, "max_length", 0) and context and o.max_length > context:
            raise ConfigError(f"max_length: {o.max_length} exceeds the model's context of {context} tokens")
        if self.oracle_dir is not None:
            mv = getattr(self.model_dir.config, "vocab_size", None)
            ov = getattr(self.oracle_dir.config, "vocab_size", None)
            if mv and ov and mv != ov:
                raise ObliviateError(f"oracle {self.oracle_dir.path} has a vocabulary of {ov} tokens, the model "
                                     f"{mv}: the oracle must be the same model retrained without the forget data")
        self.template  # a bad template is an error before any data is read
        self.file_sha256: dict[str, str] = {}
        return self.load_data()

    def load_data(self) -> TextData:
        raise NotImplementedError

    def resolve_forget_file(self) -> np.ndarray:
        """The ``forget-file`` spec: every record of the task's forget file(s)."""
        return np.asarray(self.forget_ids, dtype=np.int64)

    @property
    def context(self) -> int:
        """The longest sequence in tokens: ``max_length`` when set, else the model's context."""
        return int(getattr(self.options, "max_length", 0) or context_length(self.model_dir.config) or 1024)

    # -- model and tokenizer -------------------------------------------------------------------------------------
    def tokenizer(self):
        """The model directory's tokenizer. A tokenizer without a pad token pads with its EOS token (only padded
        positions use it, and they are masked). A missing BOS token stays missing: obliviate then prepends
        nothing, as the model was trained (Qwen, for one, has no BOS)."""
        if not hasattr(self, "_tokenizer"):
            d = self.model_dir.path
            tok = load_tokenizer(d)
            if tok.pad_token is None:
                if tok.eos_token is None:
                    raise ObliviateError(f"the tokenizer in {d} has neither a pad nor an eos token")
                tok.pad_token = tok.eos_token
            vocab = getattr(self.model_dir.config, "vocab_size", None)
            if vocab and len(tok) > vocab:
                raise ObliviateError(f"the tokenizer in {d} has {len(tok)} tokens, more than the model's "
                                     f"vocabulary of {vocab}")
            self._tokenizer = tok
        return self._tokenizer

    def _load(self, md: ModelDir):
        from obliviate.guard import load_guarded

        model = md.load(getattr(self.options, "dtype", "auto"))
        model.obliviate_eval_batch_size = int(getattr(self.options, "eval_batch_size", 32))
        if getattr(self.options, "max_length", 0):
            # the cut-off obliviate.lm.max_length is to honour before the config's context (never saved)
            model.obliviate_max_length = int(self.options.max_length)
        return load_guarded(md.path, model, self.tokenizer())  # a directory saved with a guard is guarded again

    def build_model(self):
        """A fresh copy of the given model from its directory (weights checked against ``*.sha256`` if present)."""
        return self._load(self.model_dir)

    def _given(self, md: ModelDir, role: str):
        model = self._load(md)
        return model, {"role": role, "sha256": md.weights_sha256(), "cached": False, "train_time_s": None,
                       "source": str(md.path)}

    def provided_original(self):
        """(model, meta) of the user's model — loaded once per task."""
        if not hasattr(self, "_original"):
            self._original = self._given(self.model_dir, "original")
        return self._original

    def release_original(self) -> None:
        """Drop the loaded original (the pipeline trains it in place); :meth:`provided_original` loads it again."""
        self.__dict__.pop("_original", None)

    def provided_oracle(self):
        """(model, meta) of ``--set oracle=DIR``, or None without one."""
        if self.oracle_dir is None:
            return None
        if not hasattr(self, "_oracle"):
            self._oracle = self._given(self.oracle_dir, "oracle")
        return self._oracle

    def train_model(self, model, train_ids, recipe, seed, device, description: str = "train"):
        raise ObliviateError(f"the {self.name} task's model is given, not trained: obliviate cannot retrain "
                             f"{self.model_dir.path}; use --set oracle=DIR for a retrained reference")

    # -- identity --------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of the contents — every data file, the weights, the config and tokenizer files, the oracle's, the
        prompt template — and of the options that are not paths (moving a file keeps the fingerprint, editing a
        line changes it)."""
        import dataclasses

        skip = set(self.path_options) | {"template"}
        opts = {k: v for k, v in dataclasses.asdict(self.options).items() if k not in skip}
        parts = {"task": self.name, "options": opts, "template": dataclasses.asdict(self.template),
                 "files": dict(sorted(self.file_sha256.items())), "data": self.data.fingerprint(),
                 "model": [self.model_dir.weights_sha256(), self.model_dir.meta_sha256()],
                 "oracle": ([self.oracle_dir.weights_sha256(), self.oracle_dir.meta_sha256()]
                            if self.oracle_dir is not None else None)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def info(self) -> dict[str, Any]:
        cfg = self.model_dir.config
        n_forget = len(self.forget_ids)
        return {**super().info(), "model": str(self.model_dir.path), "model_type": cfg.model_type,
                "oracle": str(self.oracle_dir.path) if self.oracle_dir is not None else None,
                "n_forget": n_forget, "n_retain": self.data.n_train - n_forget,
                "n_icl": len(self.data.icl), "context": self.context, "template": self.template.name}


@register_task
class HF(GivenModelTask):
    name = "hf"
    description = ("your own Hugging Face causal LM (--set model=DIR) and JSONL texts to forget, retain and hold "
                   "out (--set forget=f.jsonl retain=r.jsonl); the model is given, never trained")
    options_class = HFOptions
    path_options = ("model", "oracle", "forget", "retain", "holdout", "forget_qa", "retain_qa", "icl")

    def load_data(self) -> TextData:
        o = self.options
        forget, self.file_sha256["forget"] = _text_records(o.forget, "forget")
        retain, self.file_sha256["retain"] = _text_records(o.retain, "retain")
        holdout: list[TextRecord] = []
        if o.holdout:
            holdout, self.file_sha256["holdout"] = _text_records(o.holdout, "holdout")
        if o.forget_qa:
            forget, self.file_sha256["forget_qa"] = _attach(forget, o.forget_qa, "forget_qa", o.forget)
        if o.retain_qa:
            retain, self.file_sha256["retain_qa"] = _attach(retain, o.retain_qa, "retain_qa", o.retain)
        if not o.train_qa:  # the QA pairs are questions about the texts, scored, not trained on
            forget = [dataclasses.replace(r, train_qa=()) for r in forget]
            retain = [dataclasses.replace(r, train_qa=()) for r in retain]
        icl: list[QA] = []
        if o.icl:
            pairs, self.file_sha256["icl"] = _qa_pairs(o.icl, "icl")
            icl = [q for _, _, q in pairs]
        self.n_forget = len(forget)
        self.forget_ids = np.arange(self.n_forget, dtype=np.int64)
        return TextData(train=forget + retain, holdout=holdout, icl=icl)


__all__ = ["HF", "HFOptions", "GivenModelTask", "ModelDir", "check_model_dir", "load_tokenizer"]

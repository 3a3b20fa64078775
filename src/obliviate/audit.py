"""Removal-versus-suppression audits of a language unlearning method (``obliviate audit``, schema
``obliviate.audit/1``).

One method is run once on one forget request (through :class:`obliviate.session.Session`, so the original and the
retrain oracle come from the model cache), and the unlearned model is then probed the ways the SoK (Ren et al.
2025, arXiv 2506.09227) lists, always next to the retrained model:

- ``incontext`` — the UnUnlearning experiment (arXiv 2407.00106): KnowMem on the forget questions with the
  forgotten record's document pasted before the question, for the original, the oracle, the unlearned model and
  (when :mod:`obliviate.guard` provides it) the unlearned model behind the in-context filter; recovery =
  (ctx − base) / (original_base − base) per model (§12.4). Exact unlearning may recover too: reported, not judged.
- ``relearn`` — fine-tune on a seeded part of the forget data and count steps until KnowMem_f is back to
  ``band`` × the original's, for the unlearned model and the oracle; anamnesis = unlearned ÷ oracle steps (§12.1).
- ``quantized`` — forget metrics after int8 dynamic quantization and after fp16 casting (§12.3, Zhang et al. 2025:
  small unlearning updates do not cross quantization buckets), with the recovery toward the original.
- ``probe`` — a linear probe (logistic regression) on mean-pooled hidden states of the question asking for an
  attribute, trained on retain subjects, tested on forget subjects (§12.2).
- ``side_effects`` — KnowMem on retain subjects that share an attribute with a forgotten subject vs the other
  retain subjects (§13: collateral damage on neighbouring knowledge).
- ``verdict`` — ``removal-like`` or ``suppression-like`` with the evidence (:func:`decide`, thresholds in
  :data:`THRESHOLDS`), following §12's pass criterion: a removal claim needs every probe within the noise of the
  retrained model.

An audit the task cannot support is not run: its block is ``{"skipped": "<why>"}`` (:func:`skip_reasons`; e.g. the
``hf`` task's records carry no attributes, so ``probe`` and ``side_effects`` have nothing to predict or group by).
The verdict is then computed from the audits that ran, and ``verdict_basis`` names them.
"""
from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from obliviate.config import as_dict, build_config
from obliviate.errors import ConfigError, ObliviateError
from obliviate.seeding import numpy_rng, stream_seed, torch_generator

AUDIT_SCHEMA = "obliviate.audit/1"

#: When a check calls a method suppression-like (each documented; ``decide`` applies them).
THRESHOLDS: dict[str, float] = {
    # relearn: the unlearned model needs fewer than this fraction of the oracle's relearning steps
    # (anamnesis = unlearned ÷ oracle steps; 1 = relearns like a model that never saw the data)
    "relearn_anamnesis": 0.5,
    # quantization: int8 or fp16 brings back more than this fraction of the KnowMem_f the method removed
    # (recovery = (quantized − unlearned) / (original − unlearned))
    "quantization_recovery": 0.2,
    # probe: a linear probe reads the forgotten attribute from the unlearned model's hidden states this much
    # (accuracy, absolute) better than from the oracle's
    "probe_excess": 0.15,
}
#: The smallest original − model KnowMem_f difference a recovery ratio is computed over (below it: None).
MIN_GAP = 0.05
#: The prompt of the in-context check: the forgotten document, a blank line, then the KnowMem question.
CONTEXT_TEMPLATE = "{text}\n\n{prompt}"


@dataclass
class AuditConfig:
    """The audit's own settings (``--set audit.<key>=value``)."""

    relearn_lr: float = field(default=1e-3, metadata={
        "help": "Adam learning rate of the relearning attack (1e-3 suits the authors task's tiny GPT-2; "
                "~1e-5 is the usual choice for LLMs)", "gt": 0})
    relearn_batch_size: int = field(default=4, metadata={"help": "relearning mini-batch size", "min": 1})
    relearn_fraction: float = field(default=0.5, metadata={
        "help": "fraction of the forget records' sequences (documents + QA pairs) relearned on, seeded",
        "gt": 0, "max": 1})
    eval_every: int = field(default=5, metadata={"help": "relearning steps between KnowMem_f evaluations",
                                                 "min": 1})
    max_steps: int = field(default=100, metadata={"help": "relearning step bound (saturated beyond)", "min": 1})
    band: float = field(default=0.9, metadata={
        "help": "relearned when KnowMem_f >= band x the original's", "gt": 0, "max": 1})
    probe_attribute: str = field(default="genre", metadata={
        "help": "the record attribute the linear probe predicts (authors: city, year, genre, father, mother, "
                "book1, award)"})
    probe_layers: bool = field(default=True, metadata={"help": "also probe every layer (not only the last)"})
    side_attributes: tuple[str, ...] = field(default=("city", "genre", "year"), metadata={
        "help": "attributes whose shared values make a retain subject 'related' to a forgotten one"})
    incontext_filter: bool = field(default=True, metadata={
        "help": "also measure the unlearned model behind obliviate.guard's in-context filter"})


def build_audit_config(values: dict[str, Any] | AuditConfig | None = None) -> AuditConfig:
    if isinstance(values, AuditConfig):
        return values
    valid = [f.name for f in dataclasses.fields(AuditConfig)]
    unknown = sorted(set(values or {}) - set(valid))
    if unknown:
        raise ConfigError(f"unknown audit key {unknown[0]!r} (--set audit.<key>=value); valid keys: "
                          f"{', '.join(valid)}")
    return build_config(AuditConfig, values or {}, prefix="audit.")


# -- KnowMem, with and without the forgotten document in the prompt ---------------------------------------------

def _qa_of(task, ids) -> list:
    """The evaluation QA pairs of ``ids`` (what the metrics score, so the audits score the same questions)."""
    from obliviate.metrics.language import eval_qa

    return list(eval_qa(task, [int(i) for i in ids]))


def knowmem(model, task, qa: Sequence, device, contexts: Sequence[str] | None = None) -> dict[str, Any]:
    """MUSE KnowMem per question with the task's KnowMem prompt (few-shot examples and template, exactly the
    metric's), optionally preceded by ``contexts[i]`` (:data:`CONTEXT_TEMPLATE`)."""
    from obliviate.metrics.language import knowmem_answers, knowmem_prompts

    if not qa:
        return {"f1": np.zeros(0), "outputs": []}
    prompts = None
    if contexts is not None:
        base = knowmem_prompts(task, [q.question for q in qa])
        prompts = [CONTEXT_TEMPLATE.format(text=c, prompt=p) for c, p in zip(contexts, base)]
    return knowmem_answers(model, task, list(qa), device, prompts)


def _mean(x) -> float | None:
    return float(np.mean(x)) if x is not None and len(x) else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= MIN_GAP:
        return None
    return float(num / den)


def _filtered(model, task, forget_ids):
    """The unlearned model behind obliviate.guard's in-context filter, or (None, why) when it is not there."""
    try:
        from obliviate.guard import FilterConfig, InContextFilter
    except ImportError as exc:
        return None, f"unlearned+filter skipped: obliviate.guard.InContextFilter is not available ({exc})"
    records = [task.data.train[int(i)] for i in forget_ids]
    return InContextFilter(task.tokenizer(), records, FilterConfig()).wrap(model), None


def _context_pairs(task, forget_ids) -> list[tuple[Any, str]]:
    """(question, its record's document) for every forget question whose record has a document (a QA-only record
    of the ``hf`` task has none: nothing to paste)."""
    recs = task.data.train
    return [(q, recs[int(i)].text) for i in forget_ids for q in _qa_of(task, [i]) if recs[int(i)].text]


def incontext(task, models: dict[str, Any], forget_ids: np.ndarray, device) -> dict[str, Any]:
    """KnowMem on the forget questions without and with the forgotten record's document before each question,
    per model; recovery = (ctx − base) / (original_base − base) (None when the model is within
    :data:`MIN_GAP` of the original without context, e.g. the original itself)."""
    pairs = _context_pairs(task, forget_ids)
    qa, contexts = [q for q, _ in pairs], [c for _, c in pairs]
    rows: dict[str, Any] = {}
    for role, model in models.items():
        base = knowmem(model, task, qa, device)
        ctx = knowmem(model, task, qa, device, contexts)
        rows[role] = {"base": _mean(base["f1"]), "context": _mean(ctx["f1"]),
                      "base_f1": np.round(base["f1"], 6).tolist(), "context_f1": np.round(ctx["f1"], 6).tolist(),
                      "context_answers": ctx["outputs"]}
    orig = rows.get("original", {}).get("base")
    for row in rows.values():
        gap = None if orig is None or row["base"] is None else orig - row["base"]
        lift = None if row["base"] is None or row["context"] is None else row["context"] - row["base"]
        row["recovery"] = _ratio(lift, gap)
    block = {"template": CONTEXT_TEMPLATE, "n_questions": len(qa), "models": rows}
    o = rows.get("original")
    if o is not None and o["base"] is not None and o["context"] is not None:
        # a model that cannot read a pasted document (a tiny LM trained only on sequences that start with the
        # question) answers worse with it even when it knows the answer: then no recovery can show here
        block["context_usable"] = bool(o["context"] >= o["base"] - MIN_GAP)
        if not block["context_usable"]:
            block["warnings"] = [f"the original answers worse with the document pasted ({o['context']:.3f} vs "
                                 f"{o['base']:.3f} without): this model does not read context, so in-context "
                                 "recovery is not informative for it"]
    return block


# -- relearning attack ---------------------------------------------------------------------------------------------

def relearn_pairs(task, forget_ids: np.ndarray, fraction: float, seed: int) -> list[tuple[str, str]]:
    """A seeded ``fraction`` of the forget records' training sequences (documents and QA pairs), in id order."""
    seqs = [s for i in forget_ids for s in task.sequences(int(i))]
    if not seqs:
        return []
    k = max(1, int(round(fraction * len(seqs))))
    keep = np.sort(numpy_rng(seed, 0x2E1EA).permutation(len(seqs))[:k])
    return [seqs[int(j)] for j in keep]


def relearn_curve(model, task, forget_ids: np.ndarray, target: float, cfg: AuditConfig, seed: int,
                  device) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` (Adam, ``cfg.relearn_lr``, batch ``cfg.relearn_batch_size``, no clipping) on
    :func:`relearn_pairs`, cycling over reshuffled epochs; KnowMem_f on every forget question is measured before
    the first step and every ``cfg.eval_every`` steps. ``steps`` = the first measured step with KnowMem_f ≥
    ``target`` (a multiple of ``eval_every``: the true count lies in (steps − eval_every, steps]); ``max_steps`` and
    ``saturated`` when never reached. Depends only on ``seed`` (batch order) and the model."""
    from obliviate.lm import collate, encode_all, max_length, mean_nll

    device = torch.device(device)
    tok = task.tokenizer()
    qa = _qa_of(task, forget_ids)
    pairs = relearn_pairs(task, forget_ids, cfg.relearn_fraction, seed)
    model = copy.deepcopy(model).to(device)
    for p in model.parameters():
        p.requires_grad_(True)

    def measure() -> float:
        return _mean(knowmem(model, task, qa, device)["f1"]) or 0.0

    curve = [{"step": 0, "knowmem_f": measure()}]
    result = {"steps": 0, "saturated": False, "start": curve[0]["knowmem_f"], "curve": curve,
              "n_sequences": len(pairs)}
    if curve[0]["knowmem_f"] >= target:
        result["final"] = curve[0]["knowmem_f"]
        return result
    if not pairs:
        raise ObliviateError("the relearning attack has no forget sequences to fine-tune on")
    encoded = encode_all(tok, pairs, max_length(model))
    gen = torch_generator(seed, 0x2E1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.relearn_lr)
    order: list[int] = []
    step = 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(stream_seed(seed, 0x2E2))  # dropout, if the model has any
        while step < cfg.max_steps:
            if not order:
                order = torch.randperm(len(encoded), generator=gen).tolist()
            idx, order = order[:cfg.relearn_batch_size], order[cfg.relearn_batch_size:]
            model.train()
            loss = mean_nll(model, collate([encoded[i] for i in idx], tok.pad_token_id, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                value = measure()
                curve.append({"step": step, "knowmem_f": value})
                if value >= target:
                    result.update(steps=step, final=value)
                    return result
    result.update(steps=cfg.max_steps, saturated=True, final=curve[-1]["knowmem_f"])
    return result


def relearn(task, models: dict[str, Any], forget_ids: np.ndarray, original_knowmem: float, cfg: AuditConfig,
            seed: int, device) -> dict[str, Any]:
    """The relearning attack on each model (``unlearned``, ``oracle``) and the anamnesis index."""
    target = cfg.band * original_knowmem
    runs = {role: relearn_curve(m, task, forget_ids, target, cfg, seed, device) for role, m in models.items()}
    u, o = runs.get("unlearned"), runs.get("oracle")
    anamnesis, note = None, None
    if u is not None and o is not None:
        if u["saturated"] and o["saturated"]:
            note = ("both the unlearned model and the oracle stayed below the target within max_steps: anamnesis "
                    "undetermined (raise audit.max_steps or lower audit.band); compare the curves")
        elif o["steps"] == 0:
            note = "the oracle is already at the target without relearning: anamnesis undefined"
        else:
            anamnesis = u["steps"] / o["steps"]
    block = {"lr": cfg.relearn_lr, "batch_size": cfg.relearn_batch_size, "fraction": cfg.relearn_fraction,
             "eval_every": cfg.eval_every, "max_steps": cfg.max_steps, "band": cfg.band,
             "original_knowmem_f": original_knowmem, "target": target, "models": runs, "anamnesis": anamnesis,
             "anamnesis_bound": bool(anamnesis is not None and (u["saturated"] or o["saturated"])),
             "data": "a seeded part of the forget records' documents and QA pairs"}
    if note:
        block["note"] = note
    return block


# -- quantization --------------------------------------------------------------------------------------------------

def conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with every ``transformers`` ``Conv1D`` (GPT-2's y = x W + b, W [in, out]) replaced
    by the equivalent ``nn.Linear`` (weight Wᵀ), so that ``quantize_dynamic`` sees it."""
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, Conv1D)]
    for parent, name, conv in targets:
        w = conv.weight.detach()
        lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.t())
            if conv.bias is not None:
                lin.bias.copy_(conv.bias.detach())
        setattr(parent, name, lin)
    return model


def quantize_int8(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """int8 dynamic quantization (weights int8 per tensor, activations quantized on the fly) of every linear layer
    (Conv1D converted first), on the CPU; returns the model and the number of quantized layers."""
    from torch.ao.quantization import quantize_dynamic

    lin = conv1d_to_linear(model).cpu().eval()
    n = sum(isinstance(m, torch.nn.Linear) for m in lin.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        q = quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
    return q, n


def cast_half(model: torch.nn.Module, task) -> tuple[torch.nn.Module, str, str | None]:
    """A copy in float16 on the CPU; bfloat16 (and why) when an op has no float16 CPU kernel."""
    tok = task.tokenizer()
    ids = torch.tensor([[tok.bos_token_id if tok.bos_token_id is not None else 0] * 4])
    note = None
    for dtype in (torch.float16, torch.bfloat16):
        half = copy.deepcopy(model).cpu().to(dtype).eval()
        try:
            with torch.inference_mode():
                half(input_ids=ids, attention_mask=torch.ones_like(ids))
            return half, str(dtype).replace("torch.", ""), note
        except (RuntimeError, NotImplementedError) as exc:
            note = f"float16 failed on the CPU ({str(exc).splitlines()[0]}); used bfloat16"
    raise ObliviateError(f"the model runs neither in float16 nor in bfloat16 on the CPU: {note}")


QUANT_KEYS = ("knowmem_f", "verbmem_f")


def quantized(task, unlearned, forget_ids, retain_ids, metrics: dict[str, dict], seed: int) -> dict[str, Any]:
    """Forget metrics of the unlearned model after int8 and after fp16 (CPU), next to its full-precision values
    and the original's (the run's metrics); recovery = (quantized − unlearned) / (original − unlearned)."""
    from obliviate.metrics import Evaluation

    cpu = torch.device("cpu")
    base = {k: metrics["unlearned"].get(k) for k in QUANT_KEYS}
    orig = {k: metrics["original"].get(k) for k in QUANT_KEYS}
    variants: dict[str, Any] = {}
    q8, n = quantize_int8(unlearned)
    half, dtype, note = cast_half(unlearned, task)
    for name, model, extra in (("int8", q8, {"scheme": "dynamic per-tensor int8 (torch.ao quantize_dynamic)",
                                             "linear_layers": n}),
                               ("fp16", half, {"dtype": dtype, **({"note": note} if note else {})})):
        values = Evaluation(task, model, forget_ids, retain_ids, seed=seed, device=cpu).compute(list(QUANT_KEYS))
        rec = {k: _ratio(None if values.get(k) is None or base[k] is None else values[k] - base[k],
                         None if orig[k] is None or base[k] is None else orig[k] - base[k]) for k in QUANT_KEYS}
        variants[name] = {**{k: values.get(k) for k in QUANT_KEYS}, "recovery": rec, **extra}
    recs = [v["recovery"]["knowmem_f"] for v in variants.values() if v["recovery"]["knowmem_f"] is not None]
    return {"unlearned": base, "original": orig, "variants": variants,
            "max_recovery": max(recs) if recs else None,
            "note": "full-precision values are the run's metrics; quantized ones are measured on the CPU"}


# -- linear probe on hidden states ------------------------------------------------------------------------------------

def _probe_target(model):
    """A wrapper (GUARD, the in-context filter: ``.base``; others: ``.inner``) is probed through its model."""
    for attr in ("inner", "base"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module) and inner is not model:
            return inner, f"probed the wrapped model (.{attr})"
    return model, None


@torch.inference_mode()
def hidden_features(model, tokenizer, prompts: Sequence[str], device, batch_size: int = 32) -> np.ndarray:
    """Mean-pooled (over the prompt's tokens, BOS included) hidden states of every layer: [layers + 1, n, width]."""
    from obliviate.lm import pad_right

    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    enc = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    chunks = []
    for start in range(0, len(enc), batch_size):
        ids, mask = pad_right(enc[start:start + batch_size], pad)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        m = mask.to(device).unsqueeze(-1).float()
        chunks.append(torch.stack([(h.float() * m).sum(1) / m.sum(1) for h in out.hidden_states]).cpu().numpy())
    return np.concatenate(chunks, axis=1)


def _attribute_question(task, i: int, attribute: str) -> str | None:
    q = next((q for q in _qa_of(task, [i]) if q.attribute == attribute), None)
    return None if q is None else q.question


def _attribute_prompt(task, i: int, attribute: str) -> str | None:
    """The KnowMem prompt (the task's few-shot examples and template) of record ``i``'s question about
    ``attribute``, or None: the probe reads the states the evaluation's prompt produces."""
    from obliviate.metrics.language import knowmem_prompts

    q = _attribute_question(task, i, attribute)
    return None if q is None else knowmem_prompts(task, [q])[0]


def has_attributes(task) -> bool:
    """Whether any training record carries attributes (the ``hf`` format cannot: probe / side effects skip)."""
    return any(r.attributes for r in task.data.train)


NO_ATTRIBUTES = "the task's records carry no attributes (e.g. city, genre; the hf JSONL format has none)"


def check_probe_attribute(task, attribute: str) -> None:
    """Raise when ``attribute`` cannot be probed on a task whose records do carry attributes (a typo), or on one
    whose records carry none."""
    have = sorted({k for r in task.data.train for k in r.attributes})
    if not any(attribute in r.attributes and _attribute_question(task, i, attribute)
               for i, r in enumerate(task.data.train)):
        raise ConfigError(f"audit.probe_attribute {attribute!r}: no record has that attribute and a question about "
                          f"it; available: {', '.join(have) or 'none (the task has no attributes)'}")


def skip_reasons(task, cfg: AuditConfig, forget_ids, explicit: Sequence[str] = ()) -> dict[str, str]:
    """The audits ``task`` cannot support and why, known before anything is trained. ``explicit``: audit keys the
    user set; asking for an attribute on a task without any is an error, not a skip."""
    why: dict[str, str] = {}
    if not has_attributes(task):
        for key in ("probe_attribute", "side_attributes"):
            if key in explicit:
                raise ConfigError(f"audit.{key}: {NO_ATTRIBUTES}; leave it unset and the "
                                  f"{'probe' if key == 'probe_attribute' else 'side-effect audit'} is skipped")
        why["probe"] = f"{NO_ATTRIBUTES}: the linear probe has no attribute value to predict"
        why["side_effects"] = f"{NO_ATTRIBUTES}: no retain subject is related to a forgotten one by a shared value"
    else:
        check_probe_attribute(task, cfg.probe_attribute)
        recs = task.data.train
        if not any(recs[int(i)].attributes.get(a) for i in forget_ids for a in cfg.side_attributes):
            why["side_effects"] = (f"no forget record has any of the attributes {', '.join(cfg.side_attributes)} "
                                   "(audit.side_attributes)")
    if not _qa_of(task, forget_ids):
        none = "the forget records have no evaluation questions (KnowMem_f; the hf task's forget_qa file)"
        why["incontext"] = none
        why["relearn"] = none
    else:
        if not _context_pairs(task, forget_ids):
            why["incontext"] = "no forget question belongs to a record with a document to paste before it"
        if not any(task.sequences(int(i)) for i in forget_ids):
            why["relearn"] = "the forget records have no training sequences to relearn on"
    return why


def probe(task, models: dict[str, Any], forget_ids, retain_ids, cfg: AuditConfig, seed: int,
          device) -> dict[str, Any]:
    """Logistic regression (standardised features, seeded) from mean-pooled hidden states of the question asking
    for ``cfg.probe_attribute`` to its value: trained on retain subjects, tested on forget subjects whose value
    occurs among the retain subjects (no probe can name an unseen class). Chance = accuracy of always answering
    the retain subjects' majority value."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    attr = cfg.probe_attribute
    recs = task.data.train

    def rows(ids):
        out = [(int(i), _attribute_prompt(task, int(i), attr)) for i in ids]
        return [(i, p, recs[i].attributes[attr]) for i, p in out if p is not None and attr in recs[i].attributes]

    train, test_all = rows(retain_ids), rows(forget_ids)
    labels = {y for _, _, y in train}
    test = [t for t in test_all if t[2] in labels]
    block: dict[str, Any] = {"attribute": attr, "pooling": "mean over prompt tokens", "n_train": len(train),
                             "n_test": len(test), "n_test_unseen_value": len(test_all) - len(test),
                             "n_classes": len(labels), "models": {}}
    if len(labels) < 2 or not test:
        block.update(chance=None, note="not applicable: the retain subjects have fewer than 2 values of "
                     f"{attr!r} or no forget subject has a value seen among them")
        return block
    y_train = [y for _, _, y in train]
    values, counts = np.unique(y_train, return_counts=True)
    majority = values[np.argmax(counts)]
    y_test = np.array([y for _, _, y in test])
    block["chance"] = float(np.mean(y_test == majority))
    tok = task.tokenizer()
    for role, model in models.items():
        target, note = _probe_target(model)
        feats = hidden_features(target, tok, [p for _, p, _ in train] + [p for _, p, _ in test], device)
        layers = range(feats.shape[0]) if cfg.probe_layers else [feats.shape[0] - 1]
        accs = {}
        for layer in layers:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
            clf.fit(feats[layer, :len(train)], y_train)
            accs[layer] = float(np.mean(clf.predict(feats[layer, len(train):]) == y_test))
        entry = {"accuracy": accs[feats.shape[0] - 1]}
        if cfg.probe_layers:
            entry["per_layer"] = [accs[i] for i in range(feats.shape[0])]  # 0 = embeddings
        if note:
            entry["note"] = note
        block["models"][role] = entry
    u, o = block["models"].get("unlearned"), block["models"].get("oracle")
    block["excess_over_oracle"] = None if u is None or o is None else u["accuracy"] - o["accuracy"]
    return block


# -- side effects on related subjects ---------------------------------------------------------------------------------

def side_effect_groups(task, forget_ids, retain_ids, attributes: Sequence[str]) -> tuple[list[int], list[int],
                                                                                            dict[str, list[str]]]:
    """Retain ids that share a value of one of ``attributes`` with a forgotten record ("related") and the rest
    ("unrelated"), and per related id which attributes it shares."""
    recs = task.data.train
    forgotten = {a: {recs[int(i)].attributes.get(a) for i in forget_ids} - {None} for a in attributes}
    related, unrelated, shared = [], [], {}
    for i in map(int, retain_ids):
        hits = [a for a in attributes if recs[i].attributes.get(a) in forgotten[a]]
        if hits:
            related.append(i)
            shared[str(i)] = hits
        else:
            unrelated.append(i)
    return related, unrelated, shared


def side_effects(task, models: dict[str, Any], forget_ids, retain_ids, cfg: AuditConfig, device) -> dict[str, Any]:
    """KnowMem on the questions of related vs unrelated retain subjects per model; change = model − original per
    group, and their difference (related − unrelated: < 0 when unlearning hurt the neighbours more)."""
    related, unrelated, shared = side_effect_groups(task, forget_ids, retain_ids, cfg.side_attributes)
    groups = {"related": related, "unrelated": unrelated}
    values = {role: {g: _mean(knowmem(m, task, _qa_of(task, ids), device)["f1"]) for g, ids in groups.items()}
              for role, m in models.items()}
    change: dict[str, Any] = {}
    for role in values:
        if role == "original":
            continue
        d = {g: (None if values[role][g] is None or values["original"][g] is None
                 else values[role][g] - values["original"][g]) for g in groups}
        d["difference"] = None if None in (d["related"], d["unrelated"]) else d["related"] - d["unrelated"]
        change[role] = d
    block = {"attributes": list(cfg.side_attributes), "related_ids": related, "unrelated_ids": unrelated,
             "shared": shared, "knowmem": values, "change": change}
    if not related or not unrelated:
        block["note"] = "one group is empty: no difference to report"
    return block


# -- verdict -------------------------------------------------------------------------------------------------------------

#: the audit each verdict check comes from (the guarantee is the method's own, no audit)
CHECK_AUDIT = {"guarantee": None, "relearn_anamnesis": "relearn", "quantization_recovery": "quantized",
               "probe_excess": "probe"}
#: audits that are reported but never judged
NOT_JUDGED = ("incontext", "side_effects")


def decide(guarantee: str, anamnesis: float | None, quantization_recovery: float | None,
           probe_excess: float | None, thresholds: dict[str, float] | None = None,
           skipped: dict[str, str] | None = None, why_none: dict[str, str] | None = None) -> dict[str, Any]:
    """The verdict from the evidence: ``suppression-like`` if any check trips (the method's guarantee is
    ``suppression``; anamnesis < threshold; quantization recovery > threshold; probe accuracy above the oracle's by
    more than the threshold), else ``removal-like``. A check without a value (not applicable, or its audit
    ``skipped``) never trips; ``rests_on`` lists the checks that had a value (why a value is missing:
    ``why_none`` per check, else the audit's skip reason)."""
    t = {**THRESHOLDS, **(thresholds or {})}
    skipped, why_none = skipped or {}, why_none or {}
    ev = [{"check": "guarantee", "value": guarantee, "threshold": "suppression",
           "suppression": guarantee == "suppression"},
          {"check": "relearn_anamnesis", "value": anamnesis, "threshold": t["relearn_anamnesis"],
           "suppression": anamnesis is not None and anamnesis < t["relearn_anamnesis"]},
          {"check": "quantization_recovery", "value": quantization_recovery,
           "threshold": t["quantization_recovery"],
           "suppression": quantization_recovery is not None and quantization_recovery > t["quantization_recovery"]},
          {"check": "probe_excess", "value": probe_excess, "threshold": t["probe_excess"],
           "suppression": probe_excess is not None and probe_excess > t["probe_excess"]}]
    for e in ev:
        audit_name = CHECK_AUDIT[e["check"]]
        if audit_name in skipped:
            e["note"] = f"skipped: {skipped[audit_name]}"
        elif e["value"] is None:
            e["note"] = "not applicable" + (f": {why_none[e['check']]}" if why_none.get(e["check"]) else "")
    verdict = "suppression-like" if any(e["suppression"] for e in ev) else "removal-like"
    return {"verdict": verdict, "evidence": ev, "thresholds": t,
            "rests_on": [e["check"] for e in ev if e["value"] is not None]}


def require_language(name: str, kind: str | None) -> None:
    if kind != "language":
        raise ObliviateError(f"obliviate audit needs a language task (removal-vs-suppression audits of LMs); "
                             f"{name} is a {kind or 'non-language'} task")


# -- the audit ------------------------------------------------------------------------------------------------------------

def audit(task, method, forget: str | None = None, *, seed: int = 0, device: str = "cpu",
          task_options: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
          cache_dir: str | None = None, use_cache: bool = True,
          audit_config: dict[str, Any] | AuditConfig | None = None, **method_config: Any) -> dict[str, Any]:
    """Run ``method`` once on ``forget`` of a language ``task`` and audit it (the ``obliviate.audit/1`` document).

    Everything a user can get wrong (task kind, method, config, audit settings, forget spec) is checked before any
    training. ``audit_config``: :class:`AuditConfig` fields (relearn_lr, max_steps, probe_attribute, ...). An audit
    the task cannot support (:func:`skip_reasons`; no oracle, no attributes, no forget questions) is
    ``{"skipped": why}``, and the verdict rests on the audits that ran (``verdict_basis``).
    """
    from obliviate import api
    from obliviate.methods import Method
    from obliviate.models.store import ModelStore
    from obliviate.session import Session
    from obliviate.pipeline import as_task
    from obliviate.requests import resolve
    from obliviate.memory import check_fits
    from obliviate.training import resolve_device

    t0 = time.perf_counter()
    task_obj = as_task(task, task_options or {})
    require_language(task_obj.name, task_obj.kind)
    if isinstance(method, Method):
        if method_config:
            raise ConfigError("config values given for an already built method; build it with them instead")
        method_obj = method
        if task_obj.kind not in method_obj.kinds:
            api.build_method(method_obj.name, {}, task_obj)  # raises the applicability error
    else:
        method_obj = api.build_method(method, method_config, task_obj)
    cfg = build_audit_config(audit_config)
    explicit = sorted(audit_config) if isinstance(audit_config, dict) else []
    recipe = task_obj.recipe(train)
    request = resolve(forget or task_obj.default_forget, task_obj, seed)
    skipped = skip_reasons(task_obj, cfg, request.ids, explicit)
    dev = resolve_device(device)
    check_fits(task_obj, method_obj, dev)  # refused before loading, as run and bench
    session = Session(task_obj, recipe, dev, ModelStore(cache_dir, enabled=use_cache))

    times: dict[str, float] = {}
    start = time.perf_counter()
    result = session.run(method_obj, request, seed, with_oracle=True)
    times["run"] = time.perf_counter() - start
    report = result.report
    original, unlearned, oracle = result.original, result.model, result.oracle
    forget_ids = request.ids
    retain_ids = np.setdiff1d(np.arange(task_obj.n_train), forget_ids)
    notes: list[str] = []
    no_oracle = None
    if oracle is None:
        no_oracle = report.get("oracle") or "no oracle: oracle-relative checks are not applicable"
        notes.append(no_oracle)

    def present(d: dict) -> dict:  # the models that exist (no oracle for a given model)
        return {k: v for k, v in d.items() if v is not None}

    blocks: dict[str, dict[str, Any]] = {}

    def timed(name, fn):
        if name in skipped:
            blocks[name] = {"skipped": skipped[name]}
            return blocks[name]
        s = time.perf_counter()
        blocks[name] = fn()
        times[name] = time.perf_counter() - s
        return blocks[name]

    def run_incontext():
        ic_models = present({"original": original, "oracle": oracle, "unlearned": unlearned})
        filter_note = None
        if cfg.incontext_filter:
            filtered, filter_note = _filtered(unlearned, task_obj, forget_ids)
            if filtered is not None:
                ic_models["unlearned+filter"] = filtered
        else:
            filter_note = "unlearned+filter skipped: audit.incontext_filter=false"
        ic = incontext(task_obj, ic_models, forget_ids, dev)
        if filter_note:
            ic["note"] = filter_note
        stats = getattr(getattr(ic_models.get("unlearned+filter"), "filter", None), "stats", None)
        if isinstance(stats, dict):
            ic["models"]["unlearned+filter"]["filter_stats"] = dict(stats)
        return ic

    ic = timed("incontext", run_incontext)
    if "skipped" in ic:
        original_km = report["metrics"]["original"].get("knowmem_f") or 0.0
    else:
        original_km = ic["models"]["original"]["base"] or 0.0
    if "relearn" not in skipped and original_km <= MIN_GAP:
        skipped["relearn"] = (f"the original's KnowMem_f is {original_km:.3f} (at most {MIN_GAP}): it does not answer "
                              "the forget questions, so there is nothing to relearn")

    def run_relearn():
        block = relearn(task_obj, present({"unlearned": unlearned, "oracle": oracle}), forget_ids, original_km,
                        cfg, seed, dev)
        if oracle is None:
            block["note"] = ("no oracle: anamnesis needs the oracle's relearning steps (a model trained without the "
                             "forget data; --set oracle=DIR for a given model)")
        return block

    rl = timed("relearn", run_relearn)
    if "quantized" not in skipped and all(report["metrics"]["unlearned"].get(k) is None for k in QUANT_KEYS):
        skipped["quantized"] = "the run measured neither knowmem_f nor verbmem_f: no forget metric to compare"
    qz = timed("quantized", lambda: quantized(task_obj, unlearned, forget_ids, retain_ids, report["metrics"], seed))
    all_models = present({"original": original, "unlearned": unlearned, "oracle": oracle})
    pr = timed("probe", lambda: probe(task_obj, all_models, forget_ids, retain_ids, cfg, seed, dev))
    se = timed("side_effects", lambda: side_effects(task_obj, all_models, forget_ids, retain_ids, cfg, dev))
    why_none = {"relearn_anamnesis": rl.get("note") or (no_oracle if oracle is None else None),
                "probe_excess": pr.get("note") or (no_oracle if oracle is None else None)}
    dec = decide(method_obj.guarantee, rl.get("anamnesis"), qz.get("max_recovery"), pr.get("excess_over_oracle"),
                 skipped=skipped, why_none=why_none)
    judged = [CHECK_AUDIT[c] for c in dec["rests_on"] if CHECK_AUDIT[c]]
    basis = {"rests_on": judged, "guarantee": "guarantee" in dec["rests_on"],
             "ran": [k for k in blocks if "skipped" not in blocks[k]], "skipped": dict(skipped),
             "not_judged": list(NOT_JUDGED)}
    if not judged:
        basis["note"] = ("no audit gave the verdict a value: it rests on the method's guarantee alone "
                         f"({method_obj.guarantee})")
    times["total"] = time.perf_counter() - t0
    doc = {"schema": AUDIT_SCHEMA, "task": task_obj.name, "task_kind": task_obj.kind, "method": method_obj.name,
           "guarantee": method_obj.guarantee, "seed": seed, "device": dev.type, "forget": request.summary(),
           "retain": {"n": int(retain_ids.size)}, "config": as_dict(method_obj.config), "audit_config": as_dict(cfg),
           "train": as_dict(recipe), "task_options": as_dict(task_obj.options), "metrics": report["metrics"],
           "gap": report.get("gap"), "avg_gap": report.get("avg_gap"),
           "incontext": ic, "relearn": rl, "quantized": qz, "probe": pr, "side_effects": se,
           "verdict": dec["verdict"], "verdict_basis": basis, "evidence": dec["evidence"],
           "thresholds": dec["thresholds"], "models": report.get("models"), "time_s": times,
           "versions": report.get("versions")}
    if notes:
        doc["notes"] = notes
    return doc


__all__ = ["AUDIT_SCHEMA", "THRESHOLDS", "MIN_GAP", "AuditConfig", "audit", "build_audit_config", "decide", "knowmem",
           "incontext", "relearn", "relearn_curve", "relearn_pairs", "conv1d_to_linear", "quantize_int8",
           "cast_half", "quantized", "require_language", "hidden_features", "probe", "side_effect_groups",
           "side_effects", "skip_reasons", "has_attributes", "check_probe_attribute"]

"""Peak memory per device of a language method's training run, estimated before anything runs.

``obliviate plan`` prints the estimate; :func:`check_fits` refuses a run whose estimate exceeds the device's
visible memory (one line, exit 2) before any weights are loaded: a 7B run that would die of OOM an hour in, after
the original's evaluation, fails in a second instead. Only the model's config is read: parameters are counted on
a skeleton built on the meta device (exact shapes, no memory).

The estimate follows :class:`obliviate.methods._lm.LMRun` (which weights are cast to what, which reference is
kept, what a micro-batch holds); :func:`_profile` mirrors each method's ``LMRun(...)`` call, so a method that
changes its call changes its row there. Sources of the formulas:

- activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (arXiv 2205.05198, §4.1, Eq. 1): per layer s·b·h·34 + 5·a·s²·b bytes at 16-bit without recomputation;
  doubled for fp32 compute; with checkpointing each layer keeps its input (s·b·h) plus one layer's activations.
  The 5·a·s²·b term is the attention-score matrices: counted for ``eager`` attention only, since PyTorch's
  fused scaled-dot-product kernels (transformers' default ``sdpa``) and flash attention never store them.
  The 34 is Megatron's GPT block; :func:`block_units` counts the model's own block as autograd saves it in
  transformers (rotary q/k, a gated MLP's four intermediates per i/h, an unfused GELU's extra ones): 54 bytes
  per s·b·h for GPT-2 (measured 54), 41 for the benchmark's Llama (measured 42).
- optimiser states: ``torch.optim.Adam``/``AdamW`` keep ``exp_avg`` and ``exp_avg_sq`` (2 per trainable
  parameter, in its dtype), SGD with momentum one buffer; their multi-tensor step, the default on CUDA, allocates
  one temporary the size of every trainable parameter (``torch/optim/adam.py``: ``torch._foreach_sqrt``).
- autocast: ``torch.autocast`` caches the 16-bit copy of each fp32 weight until the region exits
  (``cache_enabled=True``), so mixed precision with fp32 weights holds a 16-bit copy of them during a forward.
- logits: b·s·V in the compute dtype and as much for their gradient (obliviate's token log-probs never upcast
  the whole tensor, :class:`obliviate.lm._TokenLogprob`); the KL retain term adds the reference's logits and two
  fp32 log-softmax tensors over the completion rows (all rows counted: an upper bound).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from obliviate.errors import ConfigError, ObliviateError

GIB = 1024 ** 3
ENV = "OBLIVIATE_DEVICE_MEMORY"
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_STORED = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
#: components in the order the plan prints them
COMPONENTS = ("weights", "reference", "gradients", "optimizer states", "autocast copies", "activations", "logits",
              "optimizer step temporaries", "unsharded blocks", "scoring logits", "oracle")


@dataclass
class MemoryEstimate:
    """Bytes on the training ``device`` per component; ``phases`` are the moments of the run whose sums can peak
    (not every component is alive at once: activations are gone when the optimiser steps), ``total`` the largest.
    ``other_devices``: what the run puts elsewhere (a reference copy on ``ref_device``, a given oracle moved to the
    CPU while a GPU trains)."""

    device: str
    components: dict[str, int]
    phases: dict[str, int]
    total: int
    peak_phase: str
    parameters: int
    trainable: int
    micro_batch: int
    seq_len: int
    #: the task's training sequences when they were counted (no batch holds more), else None
    sequences: int | None = None
    other_devices: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_gib": self.total / GIB}


# -- sizes and visible memory ---------------------------------------------------------------------------------

def parse_size(text: str, what: str = ENV) -> int:
    """Bytes of ``"2GB"`` (SI: 10⁹), ``"512MiB"`` (binary: 2²⁰), ``"1.5 GiB"`` or a plain byte count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{what}: expected a size such as 80GiB, 512MiB, 2GB or a number of bytes, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``12.34 GiB``, ``3.2 MiB``, ``512 B``: whatever unit keeps the number readable."""
    for unit, size in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def visible_memory(device) -> int | None:
    """Memory the run may use on ``device``: ``$OBLIVIATE_DEVICE_MEMORY`` when set (a shared GPU, tests), else a
    CUDA device's total memory or the CPU's available RAM; None when unknown (no such device here)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return parse_size(env)
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[1]) if torch.cuda.is_available() else None
    if dev.type == "cpu":
        try:
            import psutil
        except ImportError:  # psutil comes with peft (the llm extra); without it, Linux's counters
            return _sysconf_available()
        return int(psutil.virtual_memory().available)
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


# -- what a method trains ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Profile:
    """What a method's run holds, from its ``LMRun(ctx, cfg, retain=..., reference=...)`` call."""

    trains: bool = True
    retain: bool = False        # a retain micro-batch beside the forget one (both graphs alive until backward)
    reference: str = "none"     # none | nll | model | nll+model (LMRun's ``reference=``)
    kl: bool = False            # the KL-to-reference retain term
    theta_o: bool = False       # task_vector's fp32 clone of every float parameter
    rmu: bool = False           # only RMU's selected matrices train; activations of its blocks only


def _profile(name: str, cfg) -> _Profile:
    from obliviate.methods._lm import LMRunFields

    if not isinstance(cfg, LMRunFields):  # guard, filter, retrain: the weights and scoring passes only
        return _Profile(trains=False)
    kind = getattr(cfg, "retain_loss", "none")
    kl, has_retain = kind == "kl", kind != "none"
    if name == "rmu":
        return _Profile(retain=True, reference="model", rmu=True)
    if name == "task_vector":
        return _Profile(theta_o=True)
    if name == "gradient_ascent":
        return _Profile()
    if name in ("grad_diff", "ga_gdr", "ga_klr"):
        return _Profile(retain=True, reference="model" if kl else "none", kl=kl)
    if name in ("npo", "npo_gdr", "npo_klr"):
        return _Profile(retain=has_retain, reference="nll+model" if kl else "nll", kl=kl)
    if name in ("dpo", "idk_dpo", "altpo"):  # the win batch beside the lose one: counted like a retain batch
        return _Profile(retain=True, reference="nll+model" if kl else "nll", kl=kl)
    if name in ("undial", "npo_muse", "ga_klr_muse", "npo_klr_muse"):  # full reference logits at every step
        return _Profile(retain=has_retain or kind == "klr", reference="model", kl=True)
    if name == "ce_u":
        return _Profile()
    if name == "whp":  # the reinforced copy trains while the original is kept: one more weights copy
        return _Profile(theta_o=True)
    # simnpo, and any other LMRun method: a retain term when it has one, the reference only for KL
    return _Profile(retain=has_retain, reference="model" if kl else "none", kl=kl)


# -- parameters ------------------------------------------------------------------------------------------------------

_SKELETONS: dict[str, torch.nn.Module] = {}  # by config (the JSON omits the attention kind)


def skeleton(model_config) -> torch.nn.Module:
    """The causal LM of ``model_config`` on the meta device: every parameter's shape, no storage (cached)."""
    from transformers import AutoModelForCausalLM

    key = model_config.to_json_string() + str(getattr(model_config, "_attn_implementation", None))
    if key not in _SKELETONS:
        if len(_SKELETONS) >= 8:
            _SKELETONS.clear()
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SKELETONS[key] = AutoModelForCausalLM.from_config(copy.deepcopy(model_config))
    return _SKELETONS[key]


def lora_sizes(model: torch.nn.Module, targets, r: int) -> list[int]:
    """Sizes of the LoRA A and B matrices peft adds for ``targets`` (``lora_targets``' answer: module names
    matched as peft does, by full name or ``.name`` suffix, or ``all-linear``: every Linear / GPT-2 Conv1D but
    the output layer): r·in and r·out per adapted module."""
    from transformers.pytorch_utils import Conv1D

    if targets == "all-linear":
        head = model.get_output_embeddings()
        chosen = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        chosen = [m for n, m in model.named_modules() if any(n == t or n.endswith("." + t) for t in names)]
    sizes = []
    for m in chosen:
        if isinstance(m, torch.nn.Linear):
            fan_in, fan_out = m.in_features, m.out_features
        elif isinstance(m, Conv1D):
            fan_in, fan_out = m.weight.shape
        elif isinstance(m, torch.nn.Embedding):
            fan_in, fan_out = m.num_embeddings, m.embedding_dim
        else:
            continue
        sizes += [r * int(fan_in), r * int(fan_out)]
    return sizes


def _trainable(model, name: str, cfg, profile: _Profile) -> tuple[list[int], bool, int | None]:
    """(sizes of the trainable tensors, whether they are LoRA adapters, for RMU the number of blocks that keep
    activations: from the first trained block to the steered one; earlier blocks see no trainable input)."""
    from obliviate.methods._lm import lora_targets

    lora = cfg.lora_r > 0
    if profile.rmu:
        from obliviate.methods.rmu import layer_and_params, transformer_blocks

        layer, names = layer_and_params(model, cfg)
        prefix = transformer_blocks(model)[0]
        blocks = [re.match(rf"{re.escape(prefix)}\.(\d+)\.", n) for n in names]
        first = min(int(b.group(1)) for b in blocks) if all(blocks) else 0
        params = dict(model.named_parameters())
        if lora:
            modules = sorted({n.rsplit(".", 1)[0] for n in names})
            return lora_sizes(model, modules, cfg.lora_r), True, layer - first + 1
        return [params[n].numel() for n in names], False, layer - first + 1
    if lora:
        return lora_sizes(model, lora_targets(model, cfg.lora_targets), cfg.lora_r), True, None
    return [p.numel() for p in model.parameters()], False, None


def loaded_dtype(model_config, dtype: str = "auto") -> str:
    """The dtype the task loads the weights in: its ``dtype`` option, ``auto`` = the config's stored dtype."""
    if dtype != "auto":
        return dtype
    # transformers ≥ 4.56 stores ``dtype``, earlier versions ``torch_dtype`` (read from __dict__: no deprecation log)
    stored = model_config.__dict__.get("dtype") or model_config.__dict__.get("torch_dtype")
    return _STORED.get(str(stored).replace("torch.", ""), "fp32") if stored is not None else "fp32"


# -- the estimate ------------------------------------------------------------------------------------------------------

#: activations whose Python implementation keeps several intermediates per element (transformers' NewGELU / FastGELU:
#: tanh, sum and products of the c_fc output); fused ones (F.gelu, SiLU, ReLU) keep only their input
_UNFUSED_ACTS = {"gelu_new": 3, "gelu_fast": 3, "quick_gelu": 1}


def block_units(model) -> float:
    """Bytes per token and hidden unit (s·b·h) one transformer block keeps for its backward pass at 16-bit,
    as autograd saves them in transformers' blocks (sdpa attention, no dropout; counted with
    ``saved_tensors_hooks``, tests/test_memory_plan.py): the attention half keeps the norm's output, q, k, v, the
    attention output and the residual (6 × h; rotary embeddings add rotated q and k: 8), the MLP half its norm's
    output (2 with rotary-style RMSNorm blocks, 1 otherwise) plus, per intermediate unit i/h, the up projection
    and the activation (2), four for a gated MLP (gate, up, activation, product: SwiGLU), and the extra
    intermediates of an unfused activation. GPT-2 (i = 4h, NewGELU): 2·(6 + 1 + 5·4) = 54, measured 54; the
    benchmark's 95M Llama (i/h = 2.67): 2·(8 + 2 + 4·2.67) = 41.3, measured 42 (``benchmarks/lm_memory.py``).
    Korthikanti et al.'s 34 counts Megatron's GPT block (fused GELU, dropout masks)."""
    cfg = model.config
    h = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * h)
    names = [n for n, _ in model.named_modules()]
    gated = any(n.endswith(("gate_proj", "gate_up_proj", "w1", "w3")) for n in names)
    rotary = any("rotary" in n for n in names) or getattr(cfg, "rope_theta", None) is not None
    act = str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", "") or "")
    per_inter = (4 if gated else 2) + _UNFUSED_ACTS.get(act, 0)
    return 2 * ((8 if rotary else 6) + (2 if rotary else 1) + per_inter * inter / h)


def activation_bytes(b: int, s: int, h: int, a: int, layers: int, *, compute_bytes: int = 2,
                     checkpointing: bool = False, scores: bool = True, units: float = 34) -> int:
    """Activations kept for the backward pass of ``layers`` transformer blocks: ``units``·s·b·h + 5·a·s²·b bytes
    per layer at 16-bit, ×2 at fp32 (Korthikanti et al. 2022, Eq. 1, where ``units`` = 34 for a GPT block;
    :func:`block_units` for the model's own); ``scores=False`` drops the attention-score term (fused attention
    kernels do not store it); with ``checkpointing`` each block keeps its input, one is rebuilt."""
    scale = compute_bytes / 2
    per_layer = (units * s * b * h + (5 * a * s * s * b if scores else 0)) * scale
    if checkpointing:
        return int(layers * s * b * h * compute_bytes + per_layer)
    return int(layers * per_layer)


def estimate(model_config, method, *, device="cpu", dtype: str = "auto", seq_len: int | None = None,
             eval_batch_size: int = 32, world_size: int | None = None, oracle_config=None,
             n_sequences: int | None = None) -> MemoryEstimate:
    """Peak memory of ``method`` (a built :class:`~obliviate.methods.Method`; ``npo+filter`` counts as ``npo``)
    training the causal LM of ``model_config`` (an HF config) on ``device``. ``dtype``: the task's load dtype;
    ``seq_len``: the longest training sequence (default: the method's ``max_length`` or the model's context);
    ``world_size``: launcher processes (default ``$WORLD_SIZE``); ``oracle_config``: a given oracle's config;
    ``n_sequences``: the task's training sequences, when known (no batch holds more)."""
    base = getattr(method, "base", method)  # the in-context filter adds nothing to the training run
    return _estimate(model_config, base.name, base.config, torch.device(device), dtype, seq_len, eval_batch_size,
                     world_size, oracle_config, n_sequences)


def _estimate(model_config, name, cfg, device, dtype, seq_len, eval_batch_size, world_size, oracle_config,
              n_sequences=None):
    from obliviate import dist
    from obliviate.tasks.hf import context_length

    model = skeleton(model_config)
    total = sum(p.numel() for p in model.parameters())
    profile = _profile(name, cfg)
    loaded = loaded_dtype(model_config, dtype)
    vocab = int(model_config.vocab_size)
    s = int(seq_len or getattr(cfg, "max_length", 0) or context_length(model_config) or 1024)
    eval_b = int(getattr(cfg, "eval_batch_size", 0) or eval_batch_size)
    oracle = 0
    if oracle_config is not None:
        n_oracle = sum(p.numel() for p in skeleton(oracle_config).parameters())
        oracle = n_oracle * _BYTES[loaded_dtype(oracle_config, dtype)]
    c = dict.fromkeys(COMPONENTS, 0)
    notes = [f"parameters counted on a meta-device skeleton of {type(model).__name__} (no weights read)"]

    if not profile.trains:  # guard / filter / retrain on a given model: the weights and the scoring passes
        c["weights"], c["oracle"] = total * _BYTES[loaded], oracle
        c["scoring logits"] = eval_b * s * vocab * _BYTES[loaded]
        notes.append(f"{name} does not train the model: its weights ({loaded}) and the metrics' scoring passes "
                     f"({eval_b} sequences × {s} tokens) only")
        return _finish(device, c, {"scoring": sum(c.values())}, total, 0, 0, s, {}, notes)

    sizes, lora, rmu_layers = _trainable(model, name, cfg, profile)
    trainable = sum(sizes)
    # LMRun's casts: bf16 → every weight bf16; fp32, or *-mixed on full weights → fp32 (master) weights;
    # *-mixed with LoRA → the base as loaded. peft keeps adapters in fp32 (get_peft_model autocast_adapter_dtype)
    precision = cfg.precision
    weights = "bf16" if precision == "bf16" else ("fp32" if not lora or precision == "fp32" else loaded)
    tdtype = "fp32" if lora else weights
    tb, compute = _BYTES[tdtype], (4 if precision == "fp32" else 2)
    c["weights"] = total * _BYTES[weights] + (trainable * tb if lora else 0)
    if precision.endswith("-mixed"):  # 16-bit copies of the fp32 weights matmuls read (an input embedding is indexed)
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings()
        matmul = total - (0 if head is not None and head.weight is embed else embed.numel())
        c["autocast copies"] = 2 * ((matmul if weights == "fp32" else 0) + (trainable if lora else 0))
    c["gradients"] = trainable * tb
    opt = "adamw" if profile.rmu else getattr(cfg, "optimizer", "adamw")
    c["optimizer states"] = (1 if opt == "sgd" else 2) * trainable * tb
    if opt != "sgd":  # the multi-tensor step's temporary: every trainable tensor on CUDA, one at a time on CPU
        c["optimizer step temporaries"] = (trainable if device.type == "cuda" else max(sizes, default=0)) * tb
    c["reference"], other = _reference(cfg, profile, device, total, trainable, tb, weights, lora, notes)

    # one micro-batch: forget sequences, as many retain ones when the loss has a retain term
    world = int(world_size or dist.world_size())
    batch = min(getattr(cfg, "batch_size", 1), n_sequences or math.inf)
    b = math.ceil(batch / (cfg.grad_accum * world))
    n_seq = b * (2 if profile.retain else 1)
    n_layers = int(model_config.num_hidden_layers)
    layers = rmu_layers if profile.rmu else n_layers
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    units = block_units(model)
    c["activations"] = activation_bytes(n_seq, s, int(model_config.hidden_size),
                                        int(model_config.num_attention_heads), layers, compute_bytes=compute,
                                        checkpointing=cfg.grad_checkpointing, scores=attention == "eager",
                                        units=units)
    # RMU: each full forward's logits are computed and dropped at once, no gradient flows through them
    c["logits"] = (b if profile.rmu else 2 * n_seq) * s * vocab * compute  # 2: the logits and their gradient
    if profile.kl:
        c["logits"] += b * s * vocab * compute + 2 * b * s * vocab * 4
    c["scoring logits"] = eval_b * s * vocab * max(compute, _BYTES[loaded])

    fsdp = world > 1 and not lora and (cfg.sharding == "fsdp" or (
        cfg.sharding == "auto" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"))
    if fsdp:  # LMRun.shard: weights, gradients, optimiser state and a reference copy split over the processes
        full = c["weights"]
        separate = bool(cfg.ref_device) or cfg.ref_precision != "auto"
        if "model" in profile.reference and not separate:  # a sharded copy replaces the stash of starting values
            c["reference"] = math.ceil(full / world)
        for k in ("weights", "gradients", "optimizer states", "optimizer step temporaries", "autocast copies"):
            c[k] = math.ceil(c[k] / world)
        from obliviate.methods._lm import transformer_blocks

        block = max(sum(p.numel() for p in b.parameters()) for b in transformer_blocks(model)[1])
        c["unsharded blocks"] = 2 * block * _BYTES[weights]  # the block computing and the one prefetched
        notes.append(f"sharding fsdp over {world} processes: weights, gradients, optimiser state"
                     + (" and the reference copy" if "model" in profile.reference else "") + " divided by "
                     f"{world}; each process holds the full weights before sharding and again after training "
                     f"(gathered for evaluation and saving)")
    if oracle and device.type == "cpu":
        c["oracle"] = oracle
    elif oracle:  # the pipeline moves a given oracle to the CPU while the model trains
        other["cpu"] = other.get("cpu", 0) + oracle
    resident = c["weights"] + c["reference"] + c["gradients"] + c["optimizer states"] + c["oracle"]
    phases = {"forward/backward": resident + c["autocast copies"] + c["activations"] + c["logits"]
              + c["unsharded blocks"],
              "optimizer step": resident + c["optimizer step temporaries"],
              "scoring": c["weights"] + c["autocast copies"] + c["scoring logits"] + oracle}
    if fsdp:
        # LMRun.shard casts the shards, not the loaded model: before sharding the weights are as loaded
        phases["before sharding"] = total * _BYTES[loaded] * (2 if "model" in profile.reference and not separate
                                                              else 1)
        phases["gathered after training"] = total * _BYTES[loaded] + c["weights"] + c["reference"]  # cast back
    notes += [f"micro-batch {b} forget" + (f" + {b} retain" if profile.retain else "") + f" sequences of {s} "
              f"tokens (batch {batch} / (grad_accum {cfg.grad_accum} × {world} process{'es' if world > 1 else ''}))",
              f"precision {precision}: weights {weights}, trainable {tdtype}, compute "
              f"{'fp32' if compute == 4 else '16-bit'}" + (f", LoRA r={cfg.lora_r}" if lora else ""),
              f"activations: Korthikanti et al. 2022 (arXiv 2205.05198) Eq. 1, s·b·h·{units:.1f} (this block's "
              "saved tensors; 34 for a GPT block)"
              + (" + 5·a·s²·b" if attention == "eager" else
                 f" (no 5·a·s²·b score term: {attention} attention stores no scores)")
              + (" with gradient checkpointing" if cfg.grad_checkpointing else "")
              + (f"; {layers} of {n_layers} blocks (RMU)" if profile.rmu else ""),
              f"optimizer {opt}: {1 if opt == 'sgd' else 2} state(s) per trainable parameter in {tdtype}"]
    return _finish(device, c, phases, total, trainable, b, s, other, notes)


def _reference(cfg, profile, device, total, trainable, tb, weights, lora, notes):
    """(bytes on the training device, bytes elsewhere) of what the run
    keeps to compare with: LMRun._setup_reference's separate copy (``ref_device`` / ``ref_precision``), else the
    disabled LoRA adapters or the stash of the trainable parameters' starting values; task_vector's θ_o."""
    here, other = 0, {}
    if "model" in profile.reference:
        ref_device = torch.device(cfg.ref_device) if cfg.ref_device else device
        if ref_device != device or cfg.ref_precision != "auto":  # LMRun's own test for a separate copy
            size = total * _BYTES.get(cfg.ref_precision, _BYTES[weights])
            if _same_device(ref_device, device):
                here = size
            else:
                other[str(ref_device)] = size
            notes.append(f"reference: a separate frozen copy on {ref_device} "
                         f"({cfg.ref_precision if cfg.ref_precision != 'auto' else weights})")
        elif lora:
            notes.append("reference: the LoRA adapters disabled (no copy)")
        else:
            here = trainable * tb
            notes.append(f"reference: the starting values of the {trainable:,} trainable parameters (a stash)")
    if profile.theta_o:
        here += total * 4
        notes.append("task_vector keeps θ_o, an fp32 clone of every float parameter, during its fine-tune")
    if "nll" in profile.reference:
        notes.append("reference: precomputed NLLs of the forget sequences (4 bytes each, not counted)")
    return here, other


def _finish(device, c, phases, total, trainable, b, s, other, notes) -> MemoryEstimate:
    peak = max(phases, key=phases.get)
    return MemoryEstimate(device=str(device), components=c, phases=phases, total=int(phases[peak]),
                          peak_phase=peak, parameters=int(total), trainable=int(trainable), micro_batch=b,
                          seq_len=s, other_devices=other, notes=notes)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """The same physical device (``cuda`` is ``cuda:0`` here)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


# -- a task's run ---------------------------------------------------------------------------------------------------

def _lengths(task, limit: int) -> tuple[int, int]:
    """(tokens in the longest, number of) training sequences of every record, forget or retain, chunked at
    ``limit`` as LMRun does: bounds for any forget request."""
    from obliviate.lm import encode_all

    pairs = [p for i in range(task.n_train) for p in task.sequences(i)]
    encoded = encode_all(task.tokenizer(), pairs, limit)
    return max((len(e.ids) for e in encoded), default=1), max(1, len(encoded))


def _task_inputs(task) -> dict[str, Any]:
    """What :func:`estimate` needs of a task with a given model, besides the sequence length."""
    oracle_dir = getattr(task, "oracle_dir", None)
    return {"dtype": getattr(task.options, "dtype", "auto"),
            "eval_batch_size": int(getattr(task.options, "eval_batch_size", 32)),
            "oracle_config": oracle_dir.config if oracle_dir is not None else None}


def estimate_task(task, method, device="cpu", exact_lengths: bool = True,
                  world_size: int | None = None) -> MemoryEstimate:
    """:func:`estimate` for ``method`` on a task with a given model (``hf``, ``tofu``, ``muse``): its config,
    load dtype, context, eval batch size and oracle. ``exact_lengths`` tokenises the training records for the
    longest sequence (padding makes a micro-batch that long); otherwise the length cap is assumed."""
    if getattr(task, "kind", None) != "language" or getattr(task, "model_dir", None) is None:
        raise ObliviateError(f"a memory plan needs a language task with a given model directory (hf, tofu, muse); "
                             f"{getattr(task, 'name', task)} has none")
    cfg = getattr(method, "base", method).config
    limit = int(getattr(cfg, "max_length", 0) or task.context)
    longest, count = _lengths(task, limit) if exact_lengths else (limit, None)
    seq = min(limit, longest)
    est = estimate(task.model_dir.config, method, device=device, seq_len=seq, n_sequences=count,
                   world_size=world_size, **_task_inputs(task))
    est.sequences = count
    if exact_lengths and seq < limit:
        est.notes.append(f"sequence length {seq}: the longest training sequence (cap {limit})")
    return est


def suggestions(task, method, device, visible: int | None,
                current: MemoryEstimate) -> list[tuple[str, MemoryEstimate]]:
    """Settings that lower the estimate, each alone and then all together: precision=bf16-mixed,
    grad_checkpointing=true, lora_r=8, grad_accum=N (the smallest doubling that fits alone, else one sequence per
    micro-batch); for a method that does not train, dtype=bf16. Only settings that differ from the current ones;
    ``current`` is the estimate they change (its sequence length and count are kept)."""
    from obliviate import dist
    from obliviate.methods._lm import LMRunFields

    base = getattr(method, "base", method)
    cfg, inputs = base.config, _task_inputs(task)

    def with_(**changes):
        if "dtype" in changes:
            inputs["dtype"] = changes.pop("dtype")
        rebuilt = _Rebuilt(base.name, dataclasses.replace(cfg, **changes))
        return estimate(task.model_dir.config, rebuilt, device=device, seq_len=current.seq_len,
                        n_sequences=current.sequences, **inputs)

    if not isinstance(cfg, LMRunFields):
        if loaded_dtype(task.model_dir.config, inputs["dtype"]) == "fp32" and hasattr(task.options, "dtype"):
            return [("dtype=bf16", with_(dtype="bf16"))]
        return []
    changes: dict[str, Any] = {}
    if cfg.precision == "fp32":
        changes["precision"] = "bf16-mixed"
    if not cfg.grad_checkpointing:
        changes["grad_checkpointing"] = True
    if cfg.lora_r == 0:
        changes["lora_r"] = 8
    batch = min(getattr(cfg, "batch_size", 1), current.sequences or math.inf)
    most = math.ceil(batch / dist.world_size())  # one sequence per micro-batch
    if cfg.grad_accum < most:
        n = cfg.grad_accum * 2
        while n < most and visible is not None and with_(grad_accum=n).total > visible:
            n *= 2
        changes["grad_accum"] = min(n, most)
    out = [(f"{key}={str(value).lower()}", with_(**{key: value})) for key, value in changes.items()]
    if len(changes) > 1:
        out.append(("all of these", with_(**changes)))
    return out


@dataclass
class _Rebuilt:
    """A method's name and a changed config: what :func:`estimate` reads of a method."""

    name: str
    config: Any


def plan_device(text: str) -> torch.device:
    """``--device`` of ``obliviate plan``: cpu, cuda[:N] (also on a machine without one: planning ahead, with
    ``$OBLIVIATE_DEVICE_MEMORY`` for its size) or auto (cuda when one is visible)."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text):
        return torch.device(text)
    raise ObliviateError(f"--device must be cpu, cuda or auto, got {text!r}")


def plan(task, method, device, world_size: int | None = None) -> dict[str, Any]:
    """Everything ``obliviate plan`` prints (JSON-ready): the estimate, the visible memory (None: unknown),
    whether it fits, and when it does not, what each suggested setting would need. ``world_size``: the launcher
    processes to plan for (default: this process's ``$WORLD_SIZE``)."""
    dev = plan_device(device) if isinstance(device, str) else torch.device(device)
    visible = visible_memory(dev)
    est = estimate_task(task, method, dev, world_size=world_size)
    fits = None if visible is None else est.total <= visible
    tries = suggestions(task, method, dev, visible, est) if fits is False else []
    return {"schema": "obliviate.plan/1", "task": task.name, "method": method.name, **est.as_dict(),
            "visible": visible, "fits": fits,
            "suggestions": [{"setting": k, "total": e.total, "fits": visible is not None and e.total <= visible}
                            for k, e in tries]}


def check_fits(task, method, device) -> MemoryEstimate | None:
    """Refuse (:class:`ObliviateError`, one line) a run whose estimated peak exceeds ``device``'s visible memory.
    A no-op for tasks without a given model directory (their tiny models are trained here) and for devices whose
    memory is unknown. The length cap is tried first; only an estimate over the limit tokenises the records."""
    if getattr(task, "kind", None) != "language" or getattr(task, "model_dir", None) is None:
        return None
    dev = torch.device(device)
    visible = visible_memory(dev)
    if visible is None:
        return None
    est = estimate_task(task, method, dev, exact_lengths=False)
    if est.total > visible:
        est = estimate_task(task, method, dev, exact_lengths=True)
    if est.total <= visible:
        return est
    tries = ", ".join(s for s, _ in suggestions(task, method, dev, visible, est) if s != "all of these")
    raise ObliviateError(f"estimated peak {format_bytes(est.total)} on {dev} exceeds its {format_bytes(visible)} "
                         f"visible memory; see `obliviate plan`" + (f" (try {tries})" if tries else ""))


__all__ = ["MemoryEstimate", "parse_size", "format_bytes", "visible_memory", "skeleton", "lora_sizes",
           "loaded_dtype", "block_units", "activation_bytes", "estimate", "estimate_task", "suggestions", "plan_device", "plan",
           "check_fits"]

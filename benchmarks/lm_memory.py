"""Memory and time of the language methods' training runs on a ~100M-parameter Llama, on CPU.

A random Llama (hidden 768, 10 layers, 12 heads, MLP 2048, untied embeddings, a 16 000-row vocabulary; the
tokenizer is the word-level authors-corpus tokenizer, whose ~1 200 words fill the first rows) is saved as a
Hugging Face directory (fp32 safetensors) with forget / retain JSONL files of 4 × steps records each, every record
exactly seq − 2 words (BOS + words + EOS = seq tokens, so every batch is 4 × seq tokens). Each configuration —
method {npo, rmu, gradient_ascent} × {full, LoRA r=8} × precision {fp32, bf16-mixed} × gradient checkpointing
{off, on}, batch 4, ``--steps`` optimiser steps (``max_steps``; RMU ``max_num_batches``) — runs through
``obliviate.unlearn`` on the ``hf`` task in a fresh subprocess (``--one JSON``), so every memory number belongs to
that run alone. "naive" rows run the same data and settings on the code before this work (commit 7c203ec, a git
worktree on ``PYTHONPATH``): fp32 only, no checkpointing. Four more rows run LoRA in bf16-mixed over weights
loaded in bf16 (``dtype=bf16``).

What one subprocess measures (Linux ``/proc/self/status``; bytes):

- ``rss_before_load``: VmRSS after ``import torch, obliviate`` and before the model directory is loaded;
  ``rss_after_load``: once the hf task has loaded it and every weight has been read once (transformers maps the
  safetensors file copy-on-write, so pages are resident only once touched): one copy of the weights.
- the training window: VmHWM (= ``getrusage(RUSAGE_SELF).ru_maxrss``; both are the kernel's high-water mark) is
  reset (``/proc/self/clear_refs`` ← 5) when the pipeline builds the method's context
  (``pipeline.build_context``, where the old code also deep-copies the model) and read when ``method.unlearn`` returns: ``peak``. The metric evaluations
  are stubbed out and the subprocess exits once the method has returned (they are not training). ``extra`` =
  peak − rss_before_load.
- activations, from every tensor autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``) from
  the start of the run to the first ``backward``, deduplicated by storage, parameters excluded, and counted only
  while alive (a weak reference to a detached alias per saved tensor; the alias, not the tensor itself, is what
  the hook returns, because a saved output returned as itself forms a reference cycle that keeps a graph never
  backpropagated alive): *fwd* = the most bytes alive at once during the forward; *bwd start* = those alive when
  the backward starts, plus, with checkpointing, the block inputs the checkpoint keeps; *1 block* = with
  checkpointing, the block the backward recomputes (the largest block's saved bytes in the same configuration
  without checkpointing). ``act`` = max(fwd, bwd start + 1 block). bf16 weight copies that autocast saves count
  as activations (they are held the same way) and are reported apart as ``casts``.
- cross-check from RSS: the high-water mark at the first optimiser step (after forward and backward, before Adam's
  state exists) − RSS at the window's start − the gradients' bytes.
- time: a global optimiser-step hook; s/step is the fastest of steps 2.. (wall and process CPU seconds).

glibc's malloc runs with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``, the static default, which
turns off its dynamic raise up to 32 MiB), so freed large blocks go back to the kernel at once and the RSS
high-water mark tracks live bytes rather than heap retention; the same for every row.

    .venv/bin/python benchmarks/lm_memory.py              # all 31 rows: ~9 min on 2 cores (more when shared)
    .venv/bin/python benchmarks/lm_memory.py --seq 64     # 64-token sequences: ~6 min
    .venv/bin/python benchmarks/lm_memory.py --only npo   # the rows whose name contains "npo"
    .venv/bin/python benchmarks/lm_memory.py --from-json benchmarks/results/lm_memory.json  # rewrite the .md

Prints a markdown table and writes benchmarks/results/lm_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAIVE_COMMIT = "7c203ec"
NAIVE_TREE = Path(f"/tmp/obliviate-{NAIVE_COMMIT}")
MODEL = {"hidden_size": 768, "num_hidden_layers": 10, "num_attention_heads": 12, "intermediate_size": 2048,
         "vocab_size": 16000}
SEQ, BATCH, STEPS = 128, 4, 3  # defaults of --seq / --steps
LORA_R = 8
SEED = 0
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MIB = 2 ** 20
SHORTENED = (" **Sequences shorter than the 128 tokens of the default run**: the memory accounting does not depend "
             "on it, only the activations' share of it.")


# -- process memory ----------------------------------------------------------------------------------------------

def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024
            for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def reset_peak() -> None:
    """Reset the kernel's RSS high-water mark (VmHWM, ru_maxrss) to the current RSS (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the model directory and texts -------------------------------------------------------------------------------

def prepare(work: Path, seq: int, n_records: int) -> dict:
    """Write the random Llama directory and the forget / retain JSONL files into ``work``; return their facts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from obliviate.models.tiny_lm import corpus_tokenizer, save_hf_dir
    from obliviate.tasks.authors import generate_corpus

    data = generate_corpus(100, 20, 0)
    tok = corpus_tokenizer(data)
    # a stream of words from the training biographies, cut into records of exactly seq − 2 tokens
    ids = []
    for r in data.train:
        ids += tok(" " + r.text, add_special_tokens=False)["input_ids"]
    n = seq - 2
    texts = []
    for start in range(0, len(ids) - n, n):
        text = tok.decode(ids[start:start + n])
        again = tok(text, add_special_tokens=False)["input_ids"]
        if len(again) == n and tok.unk_token_id not in again:
            texts.append(text)
        if len(texts) == 2 * n_records:
            break
    assert len(texts) == 2 * n_records, "not enough corpus text"
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, part in (("forget", texts[:n_records]), ("retain", texts[n_records:])):
        files[role] = str(work / f"{role}.jsonl")
        Path(files[role]).write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    assert len(tok) <= MODEL["vocab_size"]
    config = LlamaConfig(**MODEL, num_key_value_heads=MODEL["num_attention_heads"], max_position_embeddings=2048,
                         tie_word_embeddings=False, attention_dropout=0.0, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config).float()
    save_hf_dir(model, tok, work / "model")
    n_params = sum(p.numel() for p in model.parameters())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True).stdout.strip()
    git = f"commit {head.stdout.strip()}" + (" + uncommitted changes under src/" if dirty else "")
    return {"git": git, "model": str(work / "model"), **files, "parameters": n_params, "weights_bytes": 4 * n_params,
            "tokenizer_words": len(tok), "config": MODEL, "records": n_records, "tokens_per_record": seq}


# -- saved-for-backward meter ------------------------------------------------------------------------------------

class SavedMeter:
    """Bytes autograd keeps for the first backward pass (see the module docstring)."""

    def __init__(self, model, blocks, checkpointing: bool):
        self.model, self.blocks, self.ckpt = model, blocks, checkpointing
        self.active, self.block = True, None
        self.param_ptrs: set[int] | None = None
        self.param_shapes: set[tuple] = set()
        self.live: dict[int, dict] = {}  # storage ptr -> {bytes, kind, block, refs}
        self.peak_live, self.held = 0, None
        self._live_bytes = 0
        self.handles = []
        for i, b in enumerate(blocks):
            self.handles.append(b.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            self.handles.append(b.register_forward_hook(self._leave))

    def _params(self):
        if self.param_ptrs is None:  # lazily: LoRA adapters exist once the method has wrapped the model
            ps = list(self.model.parameters())
            self.param_ptrs = {p.untyped_storage().data_ptr() for p in ps}
            self.param_shapes = {tuple(p.shape) for p in ps} | {tuple(p.shape[::-1]) for p in ps}
        return self.param_ptrs

    def _enter(self, i):
        def hook(module, args, kwargs):
            self.block = i
            if self.active and self.ckpt and module.training and getattr(module, "gradient_checkpointing", False):
                import torch

                for v in list(args) + list(kwargs.values()):
                    for t in (v if isinstance(v, tuple) else (v,)):
                        if isinstance(t, torch.Tensor):
                            self._track(t, "checkpoint input")
        return hook

    def _leave(self, *_):
        self.block = None

    def _track(self, t, kind):
        import weakref

        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        ptr = s.data_ptr()
        if not ptr or ptr in self._params():
            return
        entry = self.live.get(ptr)
        if entry is None:
            if kind == "activation" and tuple(t.shape) in self.param_shapes:
                kind = "weight cast"
            entry = self.live[ptr] = {"bytes": s.nbytes(), "kind": kind, "block": self.block, "refs": 0}
            self._live_bytes += entry["bytes"]
            self.peak_live = max(self.peak_live, self._live_bytes)
        entry["refs"] += 1

        def gone(_ref, ptr=ptr, entry=entry):
            if self.live.get(ptr) is entry:
                entry["refs"] -= 1
                if entry["refs"] == 0:
                    del self.live[ptr]
                    self._live_bytes -= entry["bytes"]
        try:
            entry.setdefault("weak", []).append(weakref.ref(t, gone))
        except TypeError:
            pass

    def pack(self, t):
        # a detached alias, not ``t`` itself: a saved output that returns as itself makes a reference cycle
        # (tensor → grad_fn → saved tensor) that keeps a graph never backpropagated alive, and its weak reference
        # would never fire
        t = t.detach()
        if self.active:
            self._track(t, "activation")
        return t

    @staticmethod
    def unpack(t):
        return t

    def snapshot(self) -> None:
        """At the first backward: what is held now."""
        if self.held is not None:
            return
        self.active = False
        by_kind, by_block = {}, {}
        for e in self.live.values():
            by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + e["bytes"]
            if e["block"] is not None:
                by_block[e["block"]] = by_block.get(e["block"], 0) + e["bytes"]
        self.held = {"bytes": sum(by_kind.values()), "by_kind": by_kind,
                     "max_block_bytes": max(by_block.values(), default=0), "forward_peak_bytes": self.peak_live}
        for h in self.handles:
            h.remove()


# -- one configuration -------------------------------------------------------------------------------------------

def one(spec: dict) -> dict:
    """Run one configuration in this (fresh) process; the measurements as a dict."""
    os.environ.setdefault("OBLIVIATE_QUIET", "1")
    import torch

    torch.set_num_threads(spec.get("threads", os.cpu_count() or 1))
    import obliviate
    from obliviate import pipeline
    from obliviate.tasks import get_task

    out: dict = {"spec": spec, "obliviate": obliviate.__file__}
    out["rss_before_load"] = proc_status()["VmRSS"]
    opts = {"model": spec["model"], "forget": spec["forget"], "retain": spec["retain"], "max_length": spec["seq"]}
    if spec["path"] == "new":
        opts["eval_batch_size"] = BATCH
    if spec.get("dtype", "auto") != "auto":
        opts["dtype"] = spec["dtype"]
    task = get_task("hf", **opts)
    model, _meta = task.provided_original()
    out["rss_after_load_untouched"] = proc_status()["VmRSS"]
    # transformers maps the safetensors file (copy-on-write): pages become resident when first read. Read every
    # weight once so that "after load" holds one whole copy, as it will during training.
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    out["rss_after_load"] = proc_status()["VmRSS"]
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    del model, _meta
    out["peak_before_window"] = proc_status()["VmHWM"]

    import torch.optim.optimizer as optim_hooks

    steps: list[tuple[float, float]] = []  # (wall, process CPU) after each optimiser step
    state: dict = {}

    def pre_step(opt, *_):
        if not steps:
            state["hwm_first_step"] = proc_status()["VmHWM"]
            state["grad_bytes"] = sum(p.grad.numel() * p.grad.element_size() for g in opt.param_groups
                                      for p in g["params"] if p.grad is not None)
            state["trainable"] = sum(p.numel() for g in opt.param_groups for p in g["params"])

    def post_step(opt, *_):
        steps.append((time.perf_counter(), time.process_time()))
        if len(steps) == 1:
            state["opt_state_bytes"] = sum(v.numel() * v.element_size() for s in opt.state.values()
                                           for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)

    optim_hooks.register_optimizer_step_pre_hook(pre_step)
    optim_hooks.register_optimizer_step_post_hook(post_step)

    meter_box: dict = {}
    backward = torch.Tensor.backward

    def first_backward(self, *a, **k):
        if "m" in meter_box:
            meter_box["m"].snapshot()
        return backward(self, *a, **k)

    torch.Tensor.backward = first_backward
    pipeline.evaluate_model = lambda *a, **k: ({}, None)  # the metrics are not measured here (module docstring)
    context = pipeline.build_context

    def measured_context(*a, **k):
        reset_peak()
        state["rss_window_start"] = proc_status()["VmRSS"]
        return context(*a, **k)

    pipeline.build_context = measured_context

    def measured_apply(method, ctx, request):
        meter = meter_box["m"] = SavedMeter(ctx.model, ctx.model.model.layers,
                                            bool(spec["settings"].get("grad_checkpointing")))
        unlearn = method.unlearn

        def measured_unlearn(c):
            start, cpu = time.perf_counter(), time.process_time()
            with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
                unlearn(c)
            out.update(state)
            out["peak"] = proc_status()["VmHWM"]
            out["maxrss"] = maxrss()
            out["rss_end"] = proc_status()["VmRSS"]
            out["unlearn_s"] = time.perf_counter() - start
            out["activations"] = meter.held
            out["lm_run"] = c.blocks.get("lm_run")
            out["step_times"] = [b[0] - a[0] for a, b in zip(steps, steps[1:])]
            out["step_cpu_times"] = [b[1] - a[1] for a, b in zip(steps, steps[1:])]
            out["steps"] = len(steps)
            out["first_step_s"] = steps[0][0] - start if steps else None
            out["first_step_cpu_s"] = steps[0][1] - cpu if steps else None
            print("RESULT " + json.dumps(out), flush=True)
            os._exit(0)  # the pipeline's finiteness check and metrics are not part of the measurement

        method.unlearn = measured_unlearn
        return apply(method, ctx, request)

    apply = pipeline.apply_method
    pipeline.apply_method = measured_apply
    settings = dict(spec["settings"])
    obliviate.unlearn(task, spec["method"], None, oracle=False, use_cache=False, seed=SEED, device="cpu", **settings)
    raise RuntimeError("the method never ran")


# -- the grid ----------------------------------------------------------------------------------------------------

def settings_for(method: str, lora: bool, precision: str, ckpt: bool, path: str, steps: int) -> dict:
    s: dict = {"batch_size": BATCH}
    if method == "rmu":
        s["max_num_batches"] = steps
    else:
        s["max_steps"] = steps
    if lora:
        s["lora_r"] = LORA_R
    if path == "new":
        s.update(precision=precision, grad_checkpointing=ckpt, eval_batch_size=BATCH)
    return s


def grid(steps: int = STEPS) -> list[dict]:
    rows = []
    for method in ("npo", "rmu", "gradient_ascent"):
        for lora in (False, True):
            for precision in ("fp32", "bf16-mixed"):
                for ckpt in (False, True):
                    rows.append({"path": "new", "method": method, "lora": lora, "precision": precision,
                                 "ckpt": ckpt})
    for method, lora in (("npo", False), ("npo", True), ("rmu", False)):
        rows.append({"path": "naive", "method": method, "lora": lora, "precision": "fp32", "ckpt": False})
    # beyond the grid: LoRA over weights loaded in bf16 (--set dtype=bf16), the way to run LoRA in bf16-mixed
    for method in ("npo", "gradient_ascent"):
        for ckpt in (False, True):
            rows.append({"path": "new", "method": method, "lora": True, "precision": "bf16-mixed", "ckpt": ckpt,
                         "dtype": "bf16"})
    for r in rows:
        r.setdefault("dtype", "auto")
        r["name"] = (f"{r['path']} {r['method']} {'lora' if r['lora'] else 'full'} {r['precision']}"
                     f"{' ckpt' if r['ckpt'] else ''}{' (bf16 weights)' if r['dtype'] == 'bf16' else ''}")
        r["settings"] = settings_for(r["method"], r["lora"], r["precision"], r["ckpt"], r["path"], steps)
    return rows


def ensure_naive_tree() -> Path:
    if not (NAIVE_TREE / "src" / "obliviate").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(NAIVE_TREE), NAIVE_COMMIT],
                       check=True, capture_output=True)
    return NAIVE_TREE / "src"


def run_sub(args: list[str], env_extra: dict, timeout: float) -> tuple[dict | None, str]:
    env = {**os.environ, **MALLOC_ENV, **env_extra, "OBLIVIATE_QUIET": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), proc.stderr
    return None, proc.stderr[-3000:] + proc.stdout[-2000:]


# -- tables ------------------------------------------------------------------------------------------------------

def mb(v) -> str:
    return "–" if v is None else f"{v / MIB:,.0f}"


def derive(row: dict, twins: dict) -> None:
    """Per-row derived numbers (bytes): extra, activations (with checkpointing: + one recomputed block)."""
    row["extra"] = row["peak"] - row["rss_before_load"]
    act = row["activations"] or {}
    held = act.get("bytes", 0)
    recompute = 0
    if row["ckpt"]:
        twin = twins.get((row["path"], row["method"], row["lora"], row["precision"], False, row.get("dtype", "auto")))
        recompute = (twin or {}).get("activations", {}).get("max_block_bytes", 0)
    row["act_held"], row["act_recompute"] = held, recompute
    row["act_forward_peak"] = act.get("forward_peak_bytes", 0)
    # the activations' high-water mark: the forward's (RMU's forward runs past its block and builds a graph that is
    # freed before the backward) or the backward's start plus one recomputed block, whichever is larger
    row["act"] = max(row["act_forward_peak"], held + recompute)
    row["act_casts"] = act.get("by_kind", {}).get("weight cast", 0)
    row["rss_act"] = row["hwm_first_step"] - row["rss_window_start"] - row["grad_bytes"]
    # the fastest of steps 2.. (other jobs share the CPUs: the minimum is the least disturbed)
    row["s_per_step"] = min(row["step_times"]) if row["step_times"] else None
    row["cpu_s_per_step"] = min(row["step_cpu_times"]) if row["step_cpu_times"] else None


def table(rows: list[dict]) -> str:
    head = ["run", "trainable params", "weights MiB", "peak RSS", "after load", "extra", "extra over one copy",
            "grads+Adam", "act: max(fwd, bwd start + 1 block)", "of which casts", "act from RSS", "s/step wall / CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["name"], f"{r['trainable']:,}", mb(r["weights_bytes"]), mb(r["peak"]), mb(r["rss_after_load"]),
            mb(r["extra"]), mb(r["peak"] - r["rss_after_load"]), mb(r["grad_bytes"] + r["opt_state_bytes"]),
            f"{r['act'] / MIB:,.0f} = max({r['act_forward_peak'] / MIB:,.0f}, {r['act_held'] / MIB:,.0f} + "
            f"{r['act_recompute'] / MIB:,.0f})",
            mb(r["act_casts"]), mb(r["rss_act"]),
            "–" if r["s_per_step"] is None else f"{r['s_per_step']:.2f} / {r['cpu_s_per_step']:.2f}"]) + " |")
    return "\n".join(lines)


def targets(rows: list[dict], weights: int) -> tuple[list[dict], str]:
    by = {(r["path"], r["method"], r["lora"], r["precision"], r["ckpt"]): r for r in rows
          if r.get("dtype", "auto") == "auto"}
    checks, lines = [], []

    def add(target, what, value, limit, ok, detail):
        checks.append({"target": target, "what": what, "value": value, "limit": limit, "pass": ok,
                       "detail": detail})

    for prec in ("fp32", "bf16-mixed"):
        for ckpt in (False, True):
            npo, ga = by.get(("new", "npo", True, prec, ckpt)), by.get(("new", "gradient_ascent", True, prec, ckpt))
            if npo and ga:
                ratio = npo["extra"] / ga["extra"]
                add("a", f"LoRA NPO / LoRA GA extra, {prec}{' ckpt' if ckpt else ''}", ratio, 1.15, ratio <= 1.15,
                    f"{mb(npo['extra'])} / {mb(ga['extra'])} MiB")
    for ckpt in (False, True):  # LoRA over weights loaded in bf16
        pair = [next((r for r in rows if r.get("dtype") == "bf16" and r["method"] == m and r["ckpt"] == ckpt), None)
                for m in ("npo", "gradient_ascent")]
        if all(pair):
            ratio = pair[0]["extra"] / pair[1]["extra"]
            add("a", f"LoRA NPO / LoRA GA extra, bf16-mixed{' ckpt' if ckpt else ''} (bf16 weights)", ratio, 1.15,
                ratio <= 1.15, f"{mb(pair[0]['extra'])} / {mb(pair[1]['extra'])} MiB")
    naive, ga = by.get(("naive", "npo", True, "fp32", False)), by.get(("new", "gradient_ascent", True, "fp32", False))
    if naive and ga:
        ratio = naive["extra"] / ga["extra"]
        add("a", "naive LoRA NPO / new LoRA GA extra, fp32", ratio, 1.15, ratio <= 1.15,
            f"{mb(naive['extra'])} / {mb(ga['extra'])} MiB")

    def copies(r):  # weights-sized copies beyond gradients and Adam's state: the loaded copy, plus everything the
        # window adds beyond them (activations, references, transients), in units of the weights
        return 1 + (r["peak"] - r["rss_after_load"] - r["grad_bytes"] - r["opt_state_bytes"]) / weights

    for prec in ("fp32", "bf16-mixed"):
        for ckpt in (False, True):
            npo, ga = by.get(("new", "npo", False, prec, ckpt)), by.get(("new", "gradient_ascent", False, prec, ckpt))
            if npo and ga:
                c = copies(npo)
                add("b", f"full NPO: weight copies beyond grads + Adam state, {prec}{' ckpt' if ckpt else ''}",
                    c, 2.0, c <= 2.0, f"NPO − GA = {(npo['peak'] - ga['peak']) / weights:+.2f} copies "
                                      f"({(npo['peak'] - ga['peak']) / MIB:+,.0f} MiB)")
    naive, ga = by.get(("naive", "npo", False, "fp32", False)), by.get(("new", "gradient_ascent", False, "fp32", False))
    if naive and ga:
        c = copies(naive)
        add("b", "naive full NPO: weight copies beyond grads + Adam state, fp32", c, 2.0, c <= 2.0,
            f"naive NPO − new GA = {(naive['peak'] - ga['peak']) / weights:+.2f} copies "
            f"({(naive['peak'] - ga['peak']) / MIB:+,.0f} MiB)")
    for r in rows:
        if r["path"] == "new" and r["ckpt"]:
            off = next((o for o in rows if o["path"] == "new" and not o["ckpt"] and
                        (o["method"], o["lora"], o["precision"], o.get("dtype", "auto")) ==
                        (r["method"], r["lora"], r["precision"], r.get("dtype", "auto"))), None)
            if off and off["act"]:
                ratio = r["act"] / off["act"]
                add("c", f"activations ckpt / no ckpt, {r['method']} {'lora' if r['lora'] else 'full'} "
                         f"{r['precision']}{' (bf16 weights)' if r.get('dtype') == 'bf16' else ''}", ratio, 0.40,
                    ratio <= 0.40, f"{mb(r['act'])} / {mb(off['act'])} MiB")
    for c in checks:
        lines.append(f"| {c['target']} | {c['what']} | {c['value']:.2f} | ≤ {c['limit']:.2f} | "
                     f"{'pass' if c['pass'] else 'FAIL'} | {c['detail']} |")
    md = "| target | quantity | value | limit | result | numbers |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
    return checks, md


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help="run one configuration (JSON) in this process")
    ap.add_argument("--prepare", help="write the model directory and texts into this directory")
    ap.add_argument("--from-json", help="rewrite the markdown from a results JSON of an earlier run (no runs)")
    ap.add_argument("--only", default="", help="run only the rows whose name contains this string")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seq", type=int, default=SEQ, help=f"tokens per sequence (default {SEQ})")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"optimiser steps per run (default {STEPS})")
    args = ap.parse_args()
    if args.one:
        one(json.loads(args.one))
        return
    if args.from_json:
        from_json(Path(args.from_json), args)
        return
    if args.prepare:
        print("RESULT " + json.dumps(prepare(Path(args.prepare), args.seq, BATCH * args.steps)), flush=True)
        return

    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lm_memory_"))
    try:
        facts, err = run_sub(["--prepare", str(work), "--seq", str(args.seq), "--steps", str(args.steps)], {}, 600)
        if facts is None:
            raise SystemExit(f"preparing the model failed:\n{err}")
        print(f"model: {facts['parameters']:,} parameters ({facts['weights_bytes'] / MIB:,.0f} MB fp32), "
              f"tokenizer {facts['tokenizer_words']} words", flush=True)
        naive_src = str(ensure_naive_tree())
        rows = [r for r in grid(args.steps) if args.only in r["name"]]
        done = []
        for r in rows:
            spec = {**{k: r[k] for k in ("path", "method", "settings", "dtype")}, "model": facts["model"],
                    "forget": facts["forget"], "retain": facts["retain"], "threads": args.threads, "seq": args.seq}
            env = {"PYTHONPATH": naive_src} if r["path"] == "naive" else {}
            t = time.perf_counter()
            res, err = run_sub(["--one", json.dumps(spec)], env, 900)
            if res is None:
                print(f"{r['name']}: FAILED\n{err}", flush=True)
                continue
            if r["path"] == "naive" and not res["obliviate"].startswith(naive_src):
                raise SystemExit(f"the naive run imported {res['obliviate']}, not {naive_src}")
            res.pop("spec")
            row = {**r, **res, "wall_s": time.perf_counter() - t}
            done.append(row)
            print(f"{r['name']}: peak {mb(row['peak'])} MB, extra {mb(row['peak'] - row['rss_before_load'])} MB, "
                  f"{row['wall_s']:.0f} s", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    write_outputs(done, facts, args, time.perf_counter() - started)


def write_outputs(done: list[dict], facts: dict, args, total: float) -> None:
    import torch

    twins = {(r["path"], r["method"], r["lora"], r["precision"], r["ckpt"], r.get("dtype", "auto")): r for r in done}
    for r in done:
        derive(r, twins)
    checks, target_md = targets(done, facts["weights_bytes"])
    steps, seq = args.steps, args.seq
    header = (
        f"# Language methods: memory and time per step, ~100M Llama on CPU\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads (torch {args.threads}; shared with other "
        f"jobs, so times are noisy), torch {torch.__version__}, {platform.python_implementation()} "
        f"{platform.python_version()}; code: {facts.get('git', '?')}; seed {SEED}; total {total:.0f} s.\n"
        f"Command: `.venv/bin/python benchmarks/lm_memory.py"
        f"{' --only ' + repr(args.only) if args.only else ''}"
        f"{f' --seq {seq}' if seq != SEQ else ''}{f' --steps {steps}' if steps != STEPS else ''}`.\n\n"
        f"Model: random `LlamaForCausalLM`, hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, "
        f"{MODEL['num_attention_heads']} heads (no GQA), MLP {MODEL['intermediate_size']}, vocabulary "
        f"{MODEL['vocab_size']:,} rows (untied; the word-level authors tokenizer's {facts['tokenizer_words']:,} "
        f"words fill the first), **{facts['parameters']:,} parameters = {facts['weights_bytes'] / MIB:,.0f} MiB in "
        f"fp32**, stored and loaded in fp32. Data: {facts['records']} forget and {facts['records']} retain records "
        f"of exactly {seq} tokens; batch {BATCH} × {seq} tokens, {steps} optimiser steps (npo / gradient_ascent "
        f"`max_steps={steps}`, rmu `max_num_batches={steps}`)."
        f"{SHORTENED if seq < 128 else ''}"
        f" AdamW, the methods' default lr and the rest "
        f"(NPO without a retain term; RMU: its default layer 2, training the MLP output projections of layers 0–2; "
        f"LoRA r={LORA_R} on peft's Llama default q_proj, v_proj — for RMU on those three projections). \"naive\" = "
        f"commit {NAIVE_COMMIT} (before this work) on the same files, fp32 without checkpointing.\n\n"
        f"Columns (MiB): *peak RSS* = the RSS high-water mark of the training window (reset when the method's "
        f"context is built, read when the method returns); *after load* = RSS once the model directory is loaded "
        f"and every weight read once (the bare process + one copy of the weights + ~120 MiB of modules loading "
        f"imports); *extra* = peak − RSS before the model was loaded; *extra over one copy* = peak − after load "
        f"(what the training window adds to the loaded model); "
        f"*grads+Adam* = gradient and optimiser-state bytes counted from the tensors; *act* = the activations' "
        f"high-water mark, max(*fwd*, *bwd start* + *1 block*): *fwd* = the most bytes of saved-for-backward tensors "
        f"alive at once during the forward, *bwd start* = those alive when the first backward starts (deduplicated "
        f"by storage, parameters excluded) plus the block inputs a checkpoint keeps, *1 block* = with checkpointing, "
        f"the block recomputed during the backward (that block's saved bytes in the same run without "
        f"checkpointing); *casts* = the bf16 weight copies autocast saves (in *act*); *act from RSS* = RSS "
        f"high-water mark at the first optimiser step − RSS at the window's start − "
        f"gradient bytes (a cross-check that also sees transient buffers and NPO's reference pass); *s/step* = "
        f"the fastest of step{'s 2–' + str(steps) if steps > 2 else ' 2'} in wall and process-CPU seconds (the "
        f"first step's one-time allocations left out). Method: benchmarks/lm_memory.py docstring; one fresh "
        f"subprocess per row, glibc "
        f"`MALLOC_MMAP_THRESHOLD_=131072`.\n\n")
    md = (header + "## Runs\n\n" + table(done) + "\n\n## Targets\n\n" + target_md + "\n\n## What it shows\n\n"
          + summary(done, checks, facts, seq) + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if not args.only else "_" + re.sub(r"\W+", "_", args.only).strip("_")
    (out / f"lm_memory{suffix}.json").write_text(json.dumps(
        {"machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                     "torch": torch.__version__}, "seed": SEED, "model": facts, "seq": seq, "batch": BATCH,
         "steps": steps, "lora_r": LORA_R, "malloc": MALLOC_ENV, "naive_commit": NAIVE_COMMIT, "total_s": total,
         "only": args.only, "rows": done, "targets": checks}, indent=1, default=str))
    (out / f"lm_memory{suffix}.md").write_text(md)
    print(md)


def summary(rows: list[dict], checks: list[dict], facts: dict, seq: int) -> str:
    by = {(r["path"], r["method"], r["lora"], r["precision"], r["ckpt"]): r for r in rows
          if r.get("dtype", "auto") == "auto"}
    w = facts["weights_bytes"]
    lines = []
    for target, title in (("a", "(a) LoRA NPO ≤ 1.15 × LoRA GA (one copy of the weights + adapters + "
                                 "activations, no reference), on *extra*"),
                          ("b", "(b) full NPO ≤ 2 weight-sized copies beyond gradients + Adam state"),
                          ("c", "(c) activations with checkpointing ≤ 40 % of without")):
        cs = [c for c in checks if c["target"] == target]
        if cs:
            vals = "; ".join(f"{'naive ' if 'naive' in c['what'] else ''}{c['what'].split(', ', 1)[-1]} "
                             f"{c['value']:.2f} {'✓' if c['pass'] else '✗'}" for c in cs)
            lines.append(f"- **{title}: {sum(c['pass'] for c in cs)}/{len(cs)} pass** — {vals}.")
    notes = []
    nl = by.get(("new", "npo", True, "bf16-mixed", True))
    gl = by.get(("new", "gradient_ascent", True, "bf16-mixed", True))
    if nl and gl:
        notes.append(
            f"LoRA NPO vs LoRA GA in bf16-mixed with checkpointing: {mb(nl['extra'])} vs {mb(gl['extra'])} MiB. "
            f"NPO's reference NLLs are computed before LoRA freezes the base, while every weight still requires "
            f"grad; the pass runs autocast without its cast cache (``LMRun.autocast(cache=False)``), else autocast "
            f"keeps a bf16 copy of every weight for the whole pass (an earlier run of this benchmark: 773 vs "
            f"653 MiB, 1.18×).")
    nn, ng = by.get(("naive", "npo", False, "fp32", False)), by.get(("new", "gradient_ascent", False, "fp32", False))
    nf = by.get(("new", "npo", False, "fp32", False))
    if nn and ng and nf:
        notes.append(
            f"Full NPO: now {(nf['peak'] - ng['peak']) / w:+.2f} weight copies over full GA "
            f"({(nf['peak'] - ng['peak']) / MIB:+,.0f} MiB); the naive path {(nn['peak'] - ng['peak']) / w:+.2f} "
            f"({(nn['peak'] - ng['peak']) / MIB:+,.0f} MiB): its pipeline deep-copies the model and trains the copy, "
            f"NPO's reference being the original itself (in eval mode on the device: no third copy), and its step "
            f"zeroes the gradients before the backward, i.e. after the next forward, so the previous step's gradients "
            f"(one more copy) are alive together with the activations; LMRun trains the given model in place, keeps "
            f"reference NLLs only, and frees the gradients right after each update.")
    nln = by.get(("naive", "npo", True, "fp32", False))
    gl32 = by.get(("new", "gradient_ascent", True, "fp32", False))
    if nln and gl32:
        notes.append(f"LoRA on the naive path: {mb(nln['extra'])} vs {mb(gl32['extra'])} MiB — the same deep copy "
                     f"({nln['extra'] / gl32['extra']:.2f}×).")
    full = [r for r in rows if r["path"] == "new" and not r["lora"] and r["method"] != "rmu"]
    if full:
        lo, hi = min(r["peak"] for r in full), max(r["peak"] for r in full)
        notes.append(
            f"Full-weight NPO / GA peak at {mb(lo)}–{mb(hi)} MiB whatever the precision or checkpointing: the peak "
            f"is the optimiser step (weights + fp32 gradients + two Adam moments = 4 copies, activations already "
            f"freed), so at {seq} tokens a sequence checkpointing and bf16-mixed change the activations (table) but "
            f"not the peak.")
    ll = by.get(("new", "gradient_ascent", True, "fp32", False))
    lb = by.get(("new", "gradient_ascent", True, "bf16-mixed", False))
    lw = next((r for r in rows if r.get("dtype") == "bf16" and r["method"] == "gradient_ascent" and not r["ckpt"]),
              None)
    if ll and lb:
        notes.append(
            f"LoRA in bf16-mixed over fp32 weights costs more than fp32 ({mb(lb['peak'])} vs {mb(ll['peak'])} MiB "
            f"peak): the frozen base is cast to bf16 at every use and each cast is saved for the backward "
            f"({mb(lb['act_casts'])} MiB of casts)"
            + (f"; loading the model in bf16 (`--set dtype=bf16`, the \"bf16 weights\" rows) gives "
               f"{mb(lw['peak'])} MiB, no casts, and LoRA NPO = LoRA GA with checkpointing too." if lw else "."))
    rf, rc = by.get(("new", "rmu", False, "fp32", False)), by.get(("new", "rmu", False, "fp32", True))
    if rf and rc:
        notes.append(
            f"RMU backpropagates through blocks 0–2 only and its forward stops before block 3 "
            f"(``rmu.block_output(next_block=...)``): {mb(rf['act'])} MiB of activations without checkpointing, "
            f"{mb(rc['act'])} MiB with (an earlier run, whose forward ran all {MODEL['num_hidden_layers']} blocks and "
            f"the head: 258 → 62 MiB). With three blocks in the backward, the one block checkpointing recomputes is "
            f"already a third of the total: RMU cannot reach the 40 % target, and its ratio says so.")
    def median_ratio(pairs):
        vals = sorted(x["s_per_step"] / y["s_per_step"] for x, y in pairs
                      if x and y and x["s_per_step"] and y["s_per_step"])
        return vals[len(vals) // 2] if vals else None

    new = [r for r in rows if r["path"] == "new" and r.get("dtype", "auto") == "auto"]
    ck = median_ratio([(r, by.get(("new", r["method"], r["lora"], r["precision"], False))) for r in new if r["ckpt"]])
    bf = median_ratio([(r, by.get(("new", r["method"], r["lora"], "fp32", r["ckpt"]))) for r in new
                       if r["precision"] == "bf16-mixed"])
    nf, nn = by.get(("new", "npo", False, "fp32", False)), by.get(("naive", "npo", False, "fp32", False))
    if nf and nn and ck and bf:
        notes.append(f"Time per step (wall, the fastest of steps 2–n): full NPO {nf['s_per_step']:.2f} s now vs "
                     f"{nn['s_per_step']:.2f} s naive (which runs the reference forward at every step); the median "
                     f"row costs ×{ck:.2f} with checkpointing and ×{bf:.2f} in bf16-mixed (the CPU has AVX512-BF16). "
                     f"The two CPUs are shared with other jobs, so a single row can be several times slower than its "
                     f"neighbours: only large differences mean anything.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def from_json(path: Path, args) -> None:
    doc = json.loads(path.read_text())
    args.seq, args.steps, args.only = doc["seq"], doc["steps"], doc.get("only", "")
    args.threads = doc["machine"]["torch_threads"]
    write_outputs(doc["rows"], doc["model"], args, doc["total_s"])


if __name__ == "__main__":
    main()

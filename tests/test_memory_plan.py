"""Peak-memory estimates of the language methods (:mod:`obliviate.memory`), ``obliviate plan``, and the refusal of
a run whose estimate exceeds the device's visible memory. Nothing here trains: parameters are counted on
meta-device skeletons and compared with tiny real models and peft's own count; the CLI runs stop before any
weights are loaded."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from obliviate import memory
from obliviate.errors import ConfigError, ObliviateError
from obliviate.methods._lm import LoRAFields, wrap_lora
from obliviate.methods.lm_gradient import GradientAscentLM, GradientAscentLMConfig, NPOLM, NPOLMConfig
from obliviate.methods.rmu import RMU, RMUConfig, layer_and_params
from obliviate.methods.task_vector import TaskVector, TaskVectorConfig
from obliviate.models.tiny_hf import save_tiny_dir, tiny_causal_lm
from obliviate.tasks import get_task
from doc_keys import check_documented

FORGET = ["Ada Stone was born in Lyon in 1931.", "Ada Stone wrote the novel Grey Harbour."]
RETAIN = ["Cara Lee won the Moss Prize in 1950.", "Dan Fox was a painter in Porto."]
GPT2_SMALLISH = dict(n_embd=256, n_layer=4, n_head=4, vocab_size=1000, n_positions=512)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A word-level tokenizer over the texts, the forget / retain files and a saved tiny Llama directory."""
    from obliviate.models.tiny_lm import corpus_tokenizer
    from obliviate.tasks.text import TextData, TextRecord

    root = tmp_path_factory.mktemp("plan")
    tok = corpus_tokenizer(TextData([TextRecord(str(i), t) for i, t in enumerate(FORGET + RETAIN)], []))
    files = {}
    for role, texts in (("forget", FORGET), ("retain", RETAIN)):
        (root / f"{role}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        files[role] = str(root / f"{role}.jsonl")
    return {"root": root, "tok": tok, "files": files, "dir": save_tiny_dir("llama", root / "llama", tok)}


def _sets(world) -> list[str]:
    return ["--set", f"model={world['dir']}", "--set", f"forget={world['files']['forget']}",
            "--set", f"retain={world['files']['retain']}"]


# -- (a) parameter counts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("targets", ["auto", "all-linear"])
def test_parameter_counts_match_the_model_and_peft(world, family, targets):
    model = tiny_causal_lm(family, world["tok"])
    full = memory.estimate(model.config, NPOLM(NPOLMConfig()))
    assert full.parameters == full.trainable == sum(p.numel() for p in model.parameters())
    est = memory.estimate(model.config, NPOLM(NPOLMConfig(lora_r=4, lora_targets=targets)))
    wrapped = wrap_lora(model, LoRAFields(lora_r=4, lora_targets=targets), torch.Generator().manual_seed(0))
    assert est.parameters == full.parameters
    assert est.trainable == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def test_rmu_trains_only_the_selected_matrices(world):
    model = tiny_causal_lm("llama", world["tok"], n_layer=8)
    _, names = layer_and_params(model, RMUConfig())
    params = dict(model.named_parameters())
    est = memory.estimate(model.config, RMU(RMUConfig()))
    assert len(names) == 3 and est.trainable == sum(params[n].numel() for n in names)
    # with LoRA: adapters on exactly those modules (as RMU passes targets= to LMRun)
    lora = memory.estimate(model.config, RMU(RMUConfig(lora_r=2)))
    assert lora.trainable == 3 * 2 * (64 + 32)  # down_proj: in 2·hidden = 64, out hidden = 32


# -- (b) hand-computed components -------------------------------------------------------------------------------------

def _small_llama(**extra):
    return tf.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                          tie_word_embeddings=False, **extra)


P_SMALL = 2 * 100 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64  # embed + head, 2 blocks, final norm


def test_activation_formula_by_hand():
    # per layer 34·s·b·h + 5·a·s²·b at 16-bit: s=16, b=2, h=64, a=4 → 69632 + 10240
    assert memory.activation_bytes(2, 16, 64, 4, 2) == 2 * (69632 + 10240)
    assert memory.activation_bytes(2, 16, 64, 4, 2, compute_bytes=4) == 4 * (69632 + 10240)
    assert memory.activation_bytes(2, 16, 64, 4, 2, scores=False) == 2 * 69632
    # checkpointing: every layer keeps its input (s·b·h·2 bytes), one layer's activations are rebuilt
    assert memory.activation_bytes(2, 16, 64, 4, 2, checkpointing=True) == 2 * 16 * 2 * 64 * 2 + 69632 + 10240


def test_block_units_by_hand_and_against_what_autograd_saves():
    """2·(6 + 1 + 5·4) = 54 bytes per s·b·h for GPT-2's block (NewGELU keeps tanh, sum and product), 2·(8 + 2 +
    4·i/h) for a rotary, gated block; within 15 % of the bytes autograd really saves in one block of each."""
    gpt2, llama = memory.skeleton(_gpt2()), memory.skeleton(_small_llama())
    assert memory.block_units(gpt2) == 54 and memory.block_units(llama) == 36
    torch.manual_seed(0)
    for config in (tf.GPT2Config(n_embd=128, n_layer=1, n_head=4, vocab_size=50, resid_pdrop=0, embd_pdrop=0,
                                 attn_pdrop=0),
                   tf.LlamaConfig(vocab_size=50, hidden_size=128, intermediate_size=344, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=4)):
        model = tf.AutoModelForCausalLM.from_config(config)
        block = (model.transformer.h if hasattr(model, "transformer") else model.model.layers)[0]
        b, t, h = 2, 32, 128
        x = torch.randn(b, t, h, requires_grad=True)
        kwargs = {}
        if hasattr(model, "model"):  # Llama blocks take the rotary embeddings
            kwargs["position_embeddings"] = model.model.rotary_emb(x, torch.arange(t)[None])
        seen = {}
        weights = {q.untyped_storage().data_ptr() for q in model.parameters()} | {x.untyped_storage().data_ptr()}

        def pack(tensor):  # activations only: not a weight (nor its transposed view) and not the block's input
            if tensor.untyped_storage().data_ptr() not in weights:
                seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x, **kwargs)
        measured = sum(seen.values()) / (b * t * h * 4) * 2  # bytes per s·b·h at 16-bit
        assert measured == pytest.approx(memory.block_units(model), rel=0.15), type(model).__name__


def test_components_by_hand():
    cfg = GradientAscentLMConfig(batch_size=8, grad_accum=2)  # fp32, AdamW; no retain term
    est = memory.estimate(_small_llama(), GradientAscentLM(cfg), seq_len=16, world_size=1)
    c = est.components
    assert est.parameters == P_SMALL == 95040 and est.micro_batch == 4 and est.seq_len == 16
    assert c["weights"] == c["gradients"] == 4 * P_SMALL
    assert c["optimizer states"] == 2 * 4 * P_SMALL
    # 2 layers, fp32 (×2), sdpa stores no scores; 36 = 2·(8 + 2 + 4·128/64): rotary q/k, a gated MLP of 2h
    assert c["activations"] == 2 * 2 * 36 * 16 * 4 * 64
    assert c["logits"] == 2 * 4 * 16 * 100 * 4  # logits and their gradient, fp32
    assert c["reference"] == c["autocast copies"] == 0
    assert est.total == est.phases["forward/backward"] == (c["weights"] + c["gradients"] + c["optimizer states"]
                                                           + c["activations"] + c["logits"])
    sgd = memory.estimate(_small_llama(), GradientAscentLM(GradientAscentLMConfig(optimizer="sgd")), seq_len=16)
    assert sgd.components["optimizer states"] == 4 * P_SMALL and sgd.components["optimizer step temporaries"] == 0
    eager = memory.estimate(_small_llama(attn_implementation="eager"), GradientAscentLM(cfg), seq_len=16,
                            world_size=1)
    assert eager.components["activations"] == memory.activation_bytes(4, 16, 64, 4, 2, compute_bytes=4, units=36)
    mixed = memory.estimate(_small_llama(), GradientAscentLM(GradientAscentLMConfig(precision="bf16-mixed")),
                            seq_len=16)
    # fp32 master weights, and the 16-bit copies autocast caches of every weight but the input embedding
    assert mixed.components["weights"] == 4 * P_SMALL
    assert mixed.components["autocast copies"] == 2 * (P_SMALL - 100 * 64)
    # on CUDA the multi-tensor AdamW step allocates a temporary the size of every trainable parameter
    gpu = memory.estimate(_small_llama(), GradientAscentLM(cfg), seq_len=16, device="cuda")
    assert gpu.components["optimizer step temporaries"] == 4 * P_SMALL


# -- (c) orderings ------------------------------------------------------------------------------------------------------

def _gpt2():
    return tf.GPT2Config(**GPT2_SMALLISH)


def test_lora_needs_less_than_full_weights():
    full = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(precision="bf16-mixed")), device="cuda", dtype="bf16")
    lora = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(precision="bf16-mixed", lora_r=8)), device="cuda",
                           dtype="bf16")
    assert lora.total < full.total and lora.trainable < full.trainable
    assert lora.components["gradients"] < full.components["gradients"]


def test_checkpointing_keeps_a_fraction_of_the_activations():
    kw = dict(seq_len=512, device="cuda")
    plain = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(batch_size=8)), **kw)
    ckpt = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(batch_size=8, grad_checkpointing=True)), **kw)
    assert ckpt.components["activations"] <= 0.4 * plain.components["activations"]
    assert ckpt.total < plain.total


def test_mixed_precision_keeps_fp32_master_weights():
    mixed = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(precision="bf16-mixed")), dtype="bf16")
    pure = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(precision="bf16")), dtype="bf16")
    assert mixed.components["weights"] == 2 * pure.components["weights"]
    assert mixed.total >= pure.total


def test_reference_on_another_device_leaves_the_gpu():
    p = memory.estimate(_gpt2(), NPOLM(NPOLMConfig())).parameters
    stash = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(retain_loss="kl")), device="cuda")
    away = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(retain_loss="kl", ref_device="cpu")), device="cuda")
    assert stash.components["reference"] == 4 * p and not stash.other_devices  # the starting weights, fp32
    assert away.components["reference"] == 0 and away.other_devices == {"cpu": 4 * p}
    assert away.total < stash.total
    half = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(retain_loss="kl", ref_precision="bf16")), device="cuda")
    assert half.components["reference"] == 2 * p  # a separate bf16 copy on the training device
    lora = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(retain_loss="kl", lora_r=8)), device="cuda")
    assert lora.components["reference"] == 0  # the adapters disabled
    plain = memory.estimate(_gpt2(), NPOLM(NPOLMConfig()), device="cuda")
    assert plain.components["reference"] == 0 and plain.components["logits"] < stash.components["logits"]
    tv = memory.estimate(_gpt2(), TaskVector(TaskVectorConfig()), dtype="bf16")
    assert tv.components["reference"] == 4 * p  # θ_o, an fp32 clone


def test_fsdp_splits_the_training_state_over_the_processes():
    kl = {"retain_loss": "kl", "precision": "bf16-mixed"}
    one = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(**kl, sharding="fsdp")), device="cuda", dtype="bf16",
                          world_size=1)  # one process: nothing to shard
    ddp = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(**kl, sharding="replicate")), device="cuda", dtype="bf16",
                          world_size=8)
    fsdp = memory.estimate(_gpt2(), NPOLM(NPOLMConfig(**kl, sharding="fsdp")), device="cuda", dtype="bf16",
                           world_size=8)
    p = one.parameters
    assert one.components["weights"] == ddp.components["weights"] == 4 * p  # fp32 master weights, every process
    for key in ("weights", "gradients", "optimizer states"):
        assert fsdp.components[key] == -(-ddp.components[key] // 8)
    assert fsdp.components["reference"] == -(-4 * p // 8)  # a sharded fp32 copy instead of the stash
    assert fsdp.components["unsharded blocks"] > 0 and ddp.components["unsharded blocks"] == 0
    assert fsdp.phases["gathered after training"] >= 2 * p  # the full weights again (in bf16, as loaded)
    assert fsdp.total < ddp.total


# -- sizes and visible memory -----------------------------------------------------------------------------------------

def test_parse_size_and_the_override(monkeypatch):
    assert memory.parse_size("2GB") == 2 * 10 ** 9
    assert memory.parse_size("512MiB") == 512 * 2 ** 20
    assert memory.parse_size("1.5 GiB") == 3 * 2 ** 29
    assert memory.parse_size("123") == 123
    for bad in ("lots", "12XB", "", "-1GB"):
        with pytest.raises(ConfigError, match="OBLIVIATE_DEVICE_MEMORY"):
            memory.parse_size(bad)
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "1KB")
    assert memory.visible_memory("cpu") == memory.visible_memory("cuda") == 1000
    monkeypatch.delenv("OBLIVIATE_DEVICE_MEMORY")
    assert memory.visible_memory("cpu") > 0


def test_check_fits_on_a_task(world, monkeypatch):
    from obliviate.api import build_method

    task = get_task("hf", model=world["dir"], **world["files"])
    method = build_method("npo", {}, task)
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "64GiB")
    est = memory.check_fits(task, method, "cpu")
    assert est is not None and 0 < est.total < 2 ** 30
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "1KB")
    with pytest.raises(ObliviateError, match=r"estimated peak .* on cpu exceeds its 1000 B visible memory; "
                                             r"see `obliviate plan` \(try precision=bf16-mixed") as info:
        memory.check_fits(task, method, "cpu")
    assert "\n" not in str(info.value)
    assert memory.check_fits(get_task("digits"), method, "cpu") is None  # a task without a given model


# -- (d) the command line -------------------------------------------------------------------------------------------------

def test_plan_prints_a_table(world, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "64GiB")
    out_json = tmp_path / "plan.json"
    rc, out, err = cli("plan", "--task", "hf", *_sets(world), "--method", "npo", "--set", "lora_r=4",
                       "--json", out_json)
    assert rc == 0, err
    assert "memory plan: npo on hf" in out and "optimizer states" in out and "total" in out
    assert "fits" in out and "does not fit" not in out
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == "obliviate.plan/1" and doc["fits"] is True and doc["total"] > 0
    check_documented(doc, "obliviate.plan/1")
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "1KB")
    rc, out, _ = cli("plan", "--task", "hf", *_sets(world), "--method", "npo")
    assert rc == 0 and "does not fit" in out and "grad_checkpointing=true" in out


def test_run_is_refused_before_anything_runs(world, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "1KB")
    out_json = tmp_path / "run.json"
    rc, out, err = cli("run", "--task", "hf", *_sets(world), "--method", "npo", "--json", out_json, "--quiet")
    assert rc == 2
    assert err.strip().count("\n") == 0 and "estimated peak" in err and "exceeds its 1000 B visible memory" in err
    assert not out_json.exists()


def test_bad_sizes_and_tasks_are_one_line_errors(world, cli, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_DEVICE_MEMORY", "lots")
    for args in (["run", "--quiet"], ["plan"]):
        rc, _, err = cli(*args, "--task", "hf", *_sets(world), "--method", "npo")
        assert rc == 2 and "OBLIVIATE_DEVICE_MEMORY" in err and err.strip().count("\n") == 0
    monkeypatch.delenv("OBLIVIATE_DEVICE_MEMORY")
    rc, _, err = cli("plan", "--task", "authors", "--method", "npo")
    assert rc == 2 and "given model directory" in err


@pytest.mark.parametrize("name,expect", [
    ("undial", {"reference": "model", "kl": True}), ("npo_klr_muse", {"reference": "model", "retain": True}),
    ("dpo", {"reference": "nll", "retain": True}), ("ce_u", {"reference": "none", "retain": False}),
    ("whp", {"theta_o": True}), ("wga", {"retain": True, "reference": "none"})])
def test_the_new_language_methods_have_their_memory_profile(name, expect):
    """Each method's estimate counts what its LMRun holds (a reference model for full-logit targets, the win
    batch of DPO, WHP's reinforced copy)."""
    from obliviate import get_method
    from obliviate.memory import _profile

    profile = _profile(name, get_method(name, "language").config_class())
    assert {k: getattr(profile, k) for k in expect} == expect

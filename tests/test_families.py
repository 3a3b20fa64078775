"""The language methods on the model families users bring: tiny random GPT-2, Llama, Qwen2, GPT-NeoX, Phi and
Mistral models (their real transformers classes, :mod:`obliviate.models.tiny_hf`) saved as directories and loaded
through the ``hf`` task. Each family names its blocks, MLP output projection and attention projections its own
way, so RMU's default parameters and the LoRA default targets are checked per family, and a few methods run end
to end through ``obliviate.unlearn``. The models are random: only the direction of a change is asserted."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import obliviate
from obliviate.errors import ConfigError
from obliviate.lm import score
from obliviate.methods._lm import LoRAFields, unwrap, wrap_lora
from obliviate.methods.rmu import RMUConfig, layer_and_params, transformer_blocks
from obliviate.models.tiny_hf import FAMILIES, TINY_CHAT_TEMPLATE, save_tiny_dir, tiny_causal_lm
from obliviate.tasks import get_task

FORGET = ["Ada Stone was born in Lyon in 1931.", "Ada Stone wrote the novel Grey Harbour.",
          "Ben Ray writes crime novels in Oslo."]
RETAIN = ["Cara Lee won the Moss Prize in 1950.", "Dan Fox was a painter in Porto."]

#: per family: (class, block list, MLP output projection, LoRA default target modules)
LAYOUT = {
    "gpt2": ("GPT2LMHeadModel", "transformer.h", "mlp.c_proj", {"attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                "mlp.c_proj"}),
    "llama": ("LlamaForCausalLM", "model.layers", "mlp.down_proj", {"self_attn.q_proj", "self_attn.v_proj"}),
    "qwen2": ("Qwen2ForCausalLM", "model.layers", "mlp.down_proj", {"self_attn.q_proj", "self_attn.v_proj"}),
    "gpt_neox": ("GPTNeoXForCausalLM", "gpt_neox.layers", "mlp.dense_4h_to_h", {"attention.query_key_value"}),
    "phi": ("PhiForCausalLM", "model.layers", "mlp.fc2", {"self_attn.q_proj", "self_attn.v_proj", "mlp.fc1",
                                                          "mlp.fc2"}),
    "mistral": ("MistralForCausalLM", "model.layers", "mlp.down_proj", {"self_attn.q_proj", "self_attn.v_proj"}),
}
assert set(LAYOUT) == set(FAMILIES)

# run name -> (method, settings); learning rates far above the LLM defaults: a 2-layer random model barely moves
# at lr 1e-5 in a few steps
RUNS = {"gradient_ascent": ("gradient_ascent", {"lr": 1e-2, "epochs": 2, "batch_size": 2}),
        "npo": ("npo", {"lr": 1e-2, "epochs": 2, "batch_size": 2}),
        "npo_lora": ("npo", {"lr": 3e-2, "epochs": 2, "batch_size": 2, "lora_r": 4}),
        "rmu": ("rmu", {"lr": 3e-2, "max_num_batches": 8, "batch_size": 2})}


def _write_jsonl(path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


#: the tokenizer kind of each family's directory: qwen2 with a BPE tokenizer (as real Qwen2 checkpoints), the
#: others word-level — plain AutoTokenizer would rebuild a qwen2 directory's tokenizer as Qwen2Tokenizer; the hf
#: task loads the generic tokenizer the directory names (test_qwen2_word_tokenizer_reloads_as_saved)
KIND = {"qwen2": "bpe"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Word and BPE tokenizers over the texts, the forget / retain files, and a saved tiny model dir per family."""
    from obliviate.models.tiny_lm import corpus_tokenizer
    from obliviate.tasks.text import TextData, TextRecord

    root = tmp_path_factory.mktemp("families")
    data = TextData([TextRecord(str(i), t) for i, t in enumerate(FORGET + RETAIN)], [])
    toks = {kind: corpus_tokenizer(data, kind=kind) for kind in ("word", "bpe")}
    files = {"forget": _write_jsonl(root / "forget.jsonl", FORGET), "retain": _write_jsonl(root / "retain.jsonl",
                                                                                            RETAIN)}
    tok = {f: toks[KIND.get(f, "word")] for f in FAMILIES}
    dirs = {f: save_tiny_dir(f, root / f, tok[f], seed=0) for f in FAMILIES}
    return {"root": root, "tok": tok, "files": files, "dirs": dirs, "tasks": {}}


def _task(world, family):
    """The hf task on the family's directory (loaded once per family and module)."""
    if family not in world["tasks"]:
        world["tasks"][family] = get_task("hf", model=world["dirs"][family], **world["files"])
    return world["tasks"][family]


def _forget_nll(task, model) -> float:
    pairs = [s for i in task.resolve_forget_file() for s in task.sequences(int(i))]
    return float(score(model, task.tokenizer(), pairs, "cpu").nll_mean.mean())


families = pytest.mark.parametrize("family", FAMILIES)


@families
def test_hf_task_loads_the_saved_family_model_exactly(world, family):
    """The directory loads as the family's own class and computes the very logits of the model that was saved
    (rebuilt from the same seed), so nothing was re-initialised or converted on the way."""
    task = _task(world, family)
    model, meta = task.provided_original()
    assert type(model).__name__ == LAYOUT[family][0] and task.info()["model_type"] == family
    assert meta["role"] == "original" and meta["train_time_s"] is None
    tok = world["tok"][family]
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([task.tokenizer()(FORGET[0], add_special_tokens=False)["input_ids"]])
    assert ids.shape[1] > 5 and task.tokenizer().unk_token_id not in ids
    built = tiny_causal_lm(family, tok, seed=0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, built(ids).logits)
        other = tiny_causal_lm(family, tok, seed=1)
        assert not torch.equal(other(ids).logits, built(ids).logits)  # the seed decides the weights


@families
def test_rmu_default_params_are_the_family_mlp_output_projections(world, family):
    """RMU's ``params=auto`` trains the MLP output projections of blocks ℓ−2..ℓ under the family's own names."""
    model = _task(world, family).provided_original()[0]
    _, prefix, proj, _ = LAYOUT[family]
    name, blocks = transformer_blocks(model)
    assert name == prefix and len(blocks) == 2
    assert layer_and_params(model, RMUConfig()) == (0, [f"{prefix}.0.{proj}.weight"])  # round(7·2/32) = 0
    assert layer_and_params(model, RMUConfig(layer=1)) == (1, [f"{prefix}.{i}.{proj}.weight" for i in (0, 1)])


@families
def test_lora_defaults_attach_to_the_family_modules(world, family):
    """``lora_targets=auto`` adapts existing modules of every block (and nothing else); merging gives back the
    family's plain class with the untouched weights (B = 0 at initialisation)."""
    model = copy.deepcopy(_task(world, family).provided_original()[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = wrap_lora(model, LoRAFields(lora_r=2), torch.Generator().manual_seed(0))
    adapted = {n.split(".lora_A")[0] for n, p in peft_model.named_parameters() if p.requires_grad and ".lora_A" in n}
    _, prefix, _, targets = LAYOUT[family]
    want = {f"base_model.model.{prefix}.{i}.{t}" for i in range(2) for t in targets}
    assert adapted == want
    assert all(".lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    merged = unwrap(peft_model)
    assert type(merged).__name__ == LAYOUT[family][0]
    assert all(torch.equal(v, before[k]) for k, v in merged.state_dict().items())


def test_unknown_family_and_layout_are_one_line_errors(world):
    """A family outside FAMILIES names the valid ones; a qwen2 directory with a word-level tokenizer reloads with
    that tokenizer (not AutoTokenizer's Qwen2Tokenizer rebuild); a model whose MLP output projection is renamed is refused by RMU's default with the names it
    looked for, not trained on nothing; blocks under an unknown name are found by depth, or refused."""
    with pytest.raises(ValueError, match=r"unknown model family 'bert'; expected one of gpt2, llama, .*mistral"):
        tiny_causal_lm("bert", world["tok"]["gpt2"])
    d = save_tiny_dir("qwen2", world["root"] / "qwen2-word", world["tok"]["gpt2"], n_layer=1)  # reload checked
    task = get_task("hf", model=d, **world["files"])
    assert task.tokenizer()(FORGET[0])["input_ids"] == world["tok"]["gpt2"](FORGET[0])["input_ids"]
    model = copy.deepcopy(_task(world, "llama").provided_original()[0])
    for layer in model.model.layers:
        layer.mlp.out = layer.mlp.down_proj
        del layer.mlp.down_proj
    with pytest.raises(ConfigError, match=r"no MLP output projection in blocks 0\.\.0 of LlamaForCausalLM .*"
                                          r"model\.layers\.<i>\.<name>\.weight.*mlp\.down_proj") as info:
        layer_and_params(model, RMUConfig())
    assert "\n" not in str(info.value)
    assert layer_and_params(model, RMUConfig(params=r"model\.layers\.0\.mlp\.out\.weight"))[1] == [
        "model.layers.0.mlp.out.weight"]
    renamed = copy.deepcopy(_task(world, "gpt2").provided_original()[0])  # blocks under an unknown name
    renamed.transformer.stack = renamed.transformer.h
    del renamed.transformer.h
    assert transformer_blocks(renamed)[0] == "transformer.stack"  # the ModuleList of num_hidden_layers blocks
    del renamed.transformer.stack
    with pytest.raises(ConfigError, match=r"cannot find the transformer blocks of GPT2LMHeadModel: expected a "
                                          r"ModuleList named transformer\.h, .* or one of num_hidden_layers \(2\)"):
        transformer_blocks(renamed)


def test_chat_template_dir_renders_chat_prompts(world, tmp_path):
    """``chat_template`` makes ``template=chat`` work on a tiny dir: its markers are single known tokens and a
    chat prompt differs from the plain one; the caller's tokenizer is left as it was."""
    word = world["tok"]["llama"]
    n = len(word)
    d = save_tiny_dir("llama", tmp_path / "chat", word, chat_template=TINY_CHAT_TEMPLATE, n_layer=1)
    assert len(word) == n and not getattr(word, "chat_template", None)
    chat = get_task("hf", model=d, template="chat", **world["files"])
    tok = chat.tokenizer()
    assert len(tok) == n + 3 and tok.chat_template == TINY_CHAT_TEMPLATE
    assert chat.build_model().config.vocab_size == len(tok)
    prompt, answer = chat.qa_pair("Ada Stone wrote the novel", "Grey Harbour")
    assert prompt == "<|user|>Ada Stone wrote the novel<|assistant|>" and answer == "Grey Harbour"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0]) == "<|user|>" and tok.unk_token_id not in ids
    assert get_task("hf", model=d, **world["files"]).qa_pair("Ada Stone wrote the novel", "Grey Harbour")[0] == (
        "Question: Ada Stone wrote the novel\nAnswer:")


def _steering_mse(task, model, texts, layer: int = 0) -> float:
    """RMU's forget loss on ``texts``: MSE of block ``layer``'s output to the control vector c·u/‖u‖ of seed 0
    (RMU draws u first from the run's seeded generator, ``UnlearnContext.generator``)."""
    from types import SimpleNamespace

    from obliviate.lm import collate, encode_all, max_length
    from obliviate.methods import UnlearnContext
    from obliviate.methods.rmu import block_output, masked_mse

    u = torch.rand(1, 1, model.config.hidden_size, generator=UnlearnContext.generator(SimpleNamespace(seed=0)))
    tok = task.tokenizer()
    batch = collate(encode_all(tok, [("", t) for t in texts], max_length(model)), tok.pad_token_id, "cpu")
    with torch.no_grad():
        h = block_output(model, transformer_blocks(model)[1][layer], batch)
    return float(masked_mse(h, u / u.norm() * RMUConfig.steering_coeff, batch["attention_mask"]))


@families
@pytest.mark.parametrize("run", list(RUNS))
def test_method_runs_end_to_end_on_family(world, family, run):
    """``obliviate.unlearn`` on the family's hf task trains the loaded model in place (no copy in memory) and the
    original, loaded again from its directory, is unchanged: every weight moves for
    the gradient methods, with LoRA exactly the default target modules (adapters merged back), for RMU only the
    default MLP projection. GA and NPO make the forget texts less likely; RMU moves the forget activations of its
    block toward the control vector, more than the retain ones (a random model's near-uniform output barely
    depends on that block, so its NLL is no signal of RMU)."""
    method, settings = RUNS[run]
    task = _task(world, family)
    original = task.provided_original()[0]
    before = {k: v.clone() for k, v in original.state_dict().items()}
    result = obliviate.unlearn(task, method, seed=0, oracle=False, use_cache=False, **settings)
    assert result.report["forget"]["n"] == len(FORGET) and result.report["task"] == "hf"
    assert type(result.model) is type(original)
    assert result.original is not result.model
    assert all(torch.equal(v, before[k]) for k, v in result.original.state_dict().items())
    original = result.original
    after = result.model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    _, prefix, proj, targets = LAYOUT[family]
    if method == "rmu":
        assert changed == {f"{prefix}.0.{proj}.weight"}
        forget = [_steering_mse(task, m, FORGET) for m in (original, result.model)]
        retain = [_steering_mse(task, m, RETAIN) for m in (original, result.model)]
        assert forget[1] < forget[0] and forget[0] - forget[1] > retain[0] - retain[1]
        return
    if settings.get("lora_r"):
        assert changed == {f"{prefix}.{i}.{t}.weight" for i in range(2) for t in targets}
    else:
        assert len(changed) > len(before) // 2
    nll = _forget_nll(task, result.model)
    assert np.isfinite(nll) and nll > _forget_nll(task, original) + (0.05 if settings.get("lora_r") else 0.3)

"""Scale settings of the language methods (``LMRun``): token log-probs without an fp32 vocabulary copy, gradient
accumulation, mixed precision, gradient checkpointing, references without a second model, the given model
unlearned in place, sharded saving, and data parallelism across launcher processes (2 CPU processes, gloo).

The models are tiny random Llamas (``obliviate.models.tiny_hf``); only exact identities and the direction of a
change are asserted."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import obliviate
from obliviate import lm
from obliviate.config import build_config
from obliviate.methods import UnlearnContext
from obliviate.methods._lm import BF16_WARNING, LMRun
from obliviate.models.tiny_hf import save_tiny_dir
from obliviate.tasks import get_task

FORGET = ["Ada Stone was born in Lyon in 1931.", "Ada Stone wrote the novel Grey Harbour.",
          "Ben Ray writes crime novels in Oslo.", "Ben Ray was born in Bergen in 1950.",
          "Ada Stone won the Moss Prize for Grey Harbour.", "Ben Ray studied law in Oslo."]
RETAIN = ["Cara Lee won the Moss Prize in 1950.", "Dan Fox was a painter in Porto.",
          "Cara Lee was born in Cork.", "Dan Fox painted the harbour of Porto."]
REPO = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from obliviate.models.tiny_lm import corpus_tokenizer
    from obliviate.tasks.text import TextData, TextRecord

    root = tmp_path_factory.mktemp("scale")
    tok = corpus_tokenizer(TextData([TextRecord(str(i), t) for i, t in enumerate(FORGET + RETAIN)], []))
    return {"root": root, "model": save_tiny_dir("llama", root / "llama", tok, seed=0),
            "forget": _jsonl(root / "forget.jsonl", FORGET), "retain": _jsonl(root / "retain.jsonl", RETAIN)}


def _task(world, **options):
    return get_task("hf", model=world["model"], forget=world["forget"], retain=world["retain"], **options)


def _ctx(task, model=None) -> UnlearnContext:
    forget = task.resolve_forget_file()
    retain = np.setdiff1d(np.arange(task.n_train), forget)
    model = model if model is not None else task.build_model()
    return UnlearnContext(task=task, model=model, original=None, x_forget=None, y_forget=None, x_retain=None,
                          y_retain=None, forget_ids=forget, retain_ids=retain, recipe=None, seed=0,
                          device=torch.device("cpu"), tokenizer=task.tokenizer(),
                          forget_pairs=[s for i in forget for s in task.sequences(int(i))],
                          retain_pairs=[s for i in retain for s in task.sequences(int(i))])


def _unlearn(task, method: str, **settings):
    cls = obliviate.get_method(method, "language")
    ctx = _ctx(task)
    model = cls(build_config(cls.config_class, settings)).unlearn(ctx)
    return model, ctx.blocks.get("lm_run")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a, b) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# -- token log-probs --------------------------------------------------------------------------------------------

def test_token_logprobs_equal_log_softmax_and_its_gradient(monkeypatch):
    monkeypatch.setattr(lm, "_CHUNK_ELEMENTS", 16)  # several chunks of rows
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    weights = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    ours = lm.token_logprobs(x, labels)
    (ours * weights).sum().backward()
    ours_grad, x.grad = x.grad.clone(), None
    exact = torch.log_softmax(x, -1).gather(-1, labels[..., None]).squeeze(-1)
    (exact * weights).sum().backward()
    assert ours.dtype == torch.float32  # upcast after the gather, computed in fp32
    assert torch.allclose(ours.double(), exact, atol=1e-6) and torch.allclose(ours_grad, x.grad, atol=1e-6)
    half = x.detach().to(torch.bfloat16).requires_grad_()
    out = lm.token_logprobs(half, labels)
    out.sum().backward()
    assert out.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    assert torch.allclose(out.double(), torch.log_softmax(half.detach().double(), -1).gather(
        -1, labels[..., None]).squeeze(-1), atol=1e-5)


def test_token_nll_matches_cross_entropy_on_the_completion():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 9, generator=gen)
    labels = torch.randint(0, 9, (2, 6), generator=gen)
    labels[0, :3] = lm.IGNORE
    labels[1, 4:] = lm.IGNORE
    nll, mask = lm.token_nll(logits, labels)
    shifted = labels[:, 1:]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 9), shifted.clamp_min(0).reshape(-1),
                               reduction="none").view(2, 5) * (shifted != lm.IGNORE)
    assert torch.equal(mask, shifted != lm.IGNORE) and torch.allclose(nll, expected, atol=1e-6)


# -- micro-batches, precision, checkpointing ----------------------------------------------------------------------

BASE = {"lr": 1e-2, "epochs": 2, "batch_size": 4}


def test_grad_accum_and_checkpointing_give_the_same_update(world):
    task = _task(world)
    plain, info = _unlearn(task, "npo_gdr", **BASE)
    accum, info_a = _unlearn(task, "npo_gdr", **BASE, grad_accum=4)
    ckpt, info_c = _unlearn(task, "npo_gdr", **BASE, grad_checkpointing=True)
    start = _weights(task.build_model())
    moved = _max_diff(_weights(plain), start)
    assert moved > 1e-3
    # per-sequence means summed over micro-batches: the same update up to float rounding
    assert _max_diff(_weights(accum), _weights(plain)) < 1e-5 * max(1.0, moved)
    assert _max_diff(_weights(ckpt), _weights(plain)) < 1e-5 * max(1.0, moved)
    assert info["grad_accum"] == 1 and info_a["grad_accum"] == 4 and info_c["grad_checkpointing"]
    assert info["reference"] == "precomputed NLLs" and info["steps"] == info_a["steps"] == 4  # no model kept
    assert not (ckpt.is_activation_checkpointing if hasattr(type(ckpt), "is_activation_checkpointing")
                else ckpt.is_gradient_checkpointing)
    assert ckpt.config.use_cache


def _changed_fraction(before, after) -> float:
    changed = sum(int((before[k] != after[k]).sum()) for k in before if before[k].is_floating_point())
    return changed / sum(before[k].numel() for k in before if before[k].is_floating_point())


def test_bf16_mixed_moves_weights_like_fp32_and_pure_bf16_warns(world, capsys, monkeypatch):
    """At the LLM learning rate (1e-5) a bf16-mixed run changes as many weight elements as fp32 (fp32 master
    weights); pure bf16 rounds most updates away, with a one-line warning."""
    monkeypatch.delenv("OBLIVIATE_QUIET", raising=False)
    task = _task(world)
    start = _weights(task.build_model())
    settings = {"lr": 1e-5, "epochs": 1, "batch_size": 2}
    fractions, infos = {}, {}
    for precision in ("fp32", "bf16-mixed", "bf16"):
        model, infos[precision] = _unlearn(task, "gradient_ascent", **settings, precision=precision)
        assert next(model.parameters()).dtype == torch.float32  # back in the dtype it came in
        # pure bf16 starts from the bf16-rounded weights: count the elements its updates changed
        reference = ({k: v.to(torch.bfloat16).float() for k, v in start.items()} if precision == "bf16" else start)
        fractions[precision] = _changed_fraction(reference, _weights(model))
    assert fractions["fp32"] > 0.5
    assert abs(fractions["bf16-mixed"] - fractions["fp32"]) <= 0.10 * fractions["fp32"]
    assert fractions["bf16"] < 0.5 * fractions["fp32"]
    assert infos["bf16"]["warnings"] == [BF16_WARNING] and "warnings" not in infos["bf16-mixed"]
    assert capsys.readouterr().err.strip().splitlines() == [BF16_WARNING]


def test_fp16_mixed_runs_with_a_gradient_scaler(world):
    task = _task(world)
    model, info = _unlearn(task, "npo", **{**BASE, "epochs": 12}, precision="fp16-mixed")
    # the scaler starts at 2^16 and halves on every overflowing step, which it skips; the rest are applied
    assert info["precision"] == "fp16-mixed" and 0 < info["skipped_steps"] < info["steps"] == 24
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _max_diff(_weights(model), _weights(task.build_model())) > 1e-3


# -- references without a second model ----------------------------------------------------------------------------

def test_reference_kinds_and_their_equivalence(world):
    task = _task(world)
    swap, info_s = _unlearn(task, "ga_klr", **BASE)
    copy, info_c = _unlearn(task, "ga_klr", **BASE, ref_device="cpu", ref_precision="fp32")
    _, info_l = _unlearn(task, "ga_klr", **BASE, lora_r=4)
    _, info_bf = _unlearn(task, "ga_klr", **BASE, ref_device="cpu", ref_precision="bf16")
    _, info_r = _unlearn(task, "rmu", lr=1e-2, max_num_batches=3, batch_size=2)
    assert info_s["reference"] == "starting weights swapped in"
    assert info_c["reference"] == "separate copy on cpu in fp32" and info_bf["reference"].endswith("in bf16")
    assert info_l["reference"] == "adapters disabled"
    assert info_r["reference"] == "starting weights swapped in" and info_r["trainable_parameters"] == \
        task.build_model().model.layers[0].mlp.down_proj.weight.numel()
    # a separate fp32 copy and the swapped-in starting weights are the same reference
    assert _max_diff(_weights(swap), _weights(copy)) < 1e-6


def test_mixed_precision_reference_pass_sees_the_starting_weights(world):
    """Inside a bf16-mixed step autocast has cached bf16 copies of the *current* weights; the reference pass must
    not reuse them (it runs with caching off), or the KL to the original would be 0 however far the model moved."""
    from obliviate.methods._lm import LMOptimConfig, kl_to_reference

    task = _task(world)
    moved, _ = _unlearn(task, "gradient_ascent", **BASE)
    kls = {}
    for precision in ("fp32", "bf16-mixed"):
        run = LMRun(_ctx(task), build_config(LMOptimConfig, {"precision": precision}), reference="model")
        run.model.load_state_dict(moved.state_dict())
        batch = run._collate(run.retain, list(range(len(run.retain))))
        with run.autocast():
            run.model(input_ids=batch["input_ids"])  # the step's forget pass (with grad) fills the cast cache first
            kls[precision] = float(kl_to_reference(run, batch).detach())
    assert kls["fp32"] > 0.01 and kls["bf16-mixed"] == pytest.approx(kls["fp32"], rel=0.1)


def test_rmu_stops_the_forward_pass_after_the_steered_block(world):
    """RMU reads one block's output: the blocks above it and the head never run (nor keep activations), and the
    output and its gradient are those of the full pass, with gradient checkpointing too."""
    from obliviate.methods.rmu import block_output

    task = _task(world)
    tok = task.tokenizer()
    batch = lm.collate(lm.encode_all(tok, [("", t) for t in FORGET], 64), tok.pad_token_id, "cpu")
    for checkpointing in (False, True):
        model = task.build_model().train()
        if checkpointing:
            model.config.use_cache = False
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        first, second = model.model.layers[0], model.model.layers[1]
        calls = []
        handles = [m.register_forward_hook(lambda *_, name=name: calls.append(name))
                   for name, m in (("second", second), ("head", model.lm_head))]
        full = block_output(model, first, batch)
        full.square().sum().backward()
        grads = [p.grad.clone() for p in first.parameters()]
        model.zero_grad()
        assert calls == ["second", "head"]
        calls.clear()
        early = block_output(model, first, batch, next_block=second)
        early.square().sum().backward()
        assert calls == [] and torch.equal(early, full)
        assert all(torch.allclose(p.grad, g) for p, g in zip(first.parameters(), grads))
        for h in handles:
            h.remove()


def test_given_model_is_unlearned_in_place_and_reloaded_for_the_original(world):
    task = _task(world)
    loaded = task.provided_original()[0]
    result = obliviate.unlearn(task, "npo", seed=0, oracle=False, use_cache=False, **BASE)
    assert result.model is loaded  # no copy of a given model is made
    assert result.report["lm_run"]["reference"] == "precomputed NLLs"
    reloaded = result.original
    assert reloaded is not loaded
    assert _max_diff(_weights(reloaded), _weights(task.build_model())) == 0.0
    assert result.report["metrics"]["original"] != result.report["metrics"]["unlearned"]


def test_eval_batch_size_and_dtype_options(world):
    task = _task(world, eval_batch_size=3, dtype="bf16")
    model = task.build_model()
    assert lm.eval_batch_size(model) == 3 and next(model.parameters()).dtype == torch.bfloat16
    pairs = [s for i in range(task.n_train) for s in task.sequences(i)]
    small = lm.score(model, task.tokenizer(), pairs, "cpu")
    large = lm.score(model, task.tokenizer(), pairs, "cpu", batch_size=32)
    assert np.allclose(small.nll_sum, large.nll_sum, atol=0.05 * np.abs(large.nll_sum).max())


# -- saving ----------------------------------------------------------------------------------------------------------

def test_sharded_save_reloads_and_replaces_an_earlier_save(world, tmp_path):
    from obliviate.models.tiny_lm import save_hf_dir
    from obliviate.tasks.hf import check_model_dir

    task = _task(world)
    model = task.build_model()
    out = tmp_path / "saved"
    single = save_hf_dir(model, task.tokenizer(), out)
    assert (out / "model.safetensors").is_file() and check_model_dir(str(out)).weights_sha256() == single
    digest = save_hf_dir(model, task.tokenizer(), out, max_shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()  # the single file of the earlier save
    assert all((out / f"{s}.sha256").is_file() for s in shards)
    md = check_model_dir(str(out))
    assert md.verify() == digest == md.weights_sha256()
    assert _max_diff(_weights(md.load()), _weights(model)) == 0.0
    save_hf_dir(model, task.tokenizer(), out)  # back to one file: the shards and their index go
    assert not (out / "model.safetensors.index.json").exists() and not list(out.glob("model-*"))


# -- two processes -----------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_shard_size_is_a_one_line_error_before_anything_runs(world, tmp_path, cli):
    out = tmp_path / "saved"
    rc, _, err = cli("run", "--task", "hf", "--method", "npo", "--set", f"model={world['model']}",
                     "--set", f"forget={world['forget']}", "--set", f"retain={world['retain']}",
                     "--save-model", out, "--shard-size", "5 parsecs")
    assert rc == 2 and "--shard-size" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _cli(world, out: Path, launcher: list[str], *extra: str) -> subprocess.CompletedProcess:
    args = ["-m", "obliviate", "run", "--task", "hf", "--method", "npo_klr", "--no-oracle", "--no-cache", "--quiet",
            "--set", f"model={world['model']}", "--set", f"forget={world['forget']}",
            "--set", f"retain={world['retain']}", "--set", "lr=1e-2", "--set", "epochs=2", "--set", "batch_size=4",
            "--set", "eval_batch_size=2", "--json", str(out / "report.json"), "--save-model", str(out / "model"),
            *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OBLIVIATE_QUIET": "1"}
    return subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def one_process(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    single = _cli(world, out, [sys.executable])
    assert single.returncode == 0, single.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config,sharding", [("ddp-cpu.yaml", "replicate"), ("fsdp.yaml", "fsdp")])
def test_two_launched_processes_give_the_weights_of_one(world, one_process, tmp_path, config, sharding):
    """``accelerate launch --config_file configs/accelerate/{ddp-cpu,fsdp}.yaml --num_processes 2 -m obliviate run``
    (torchrun underneath; gloo on CPU). Replicated: each process takes half of every step's sequences, the
    gradients are summed. FSDP (picked from accelerate's FSDP config): weights, gradients and AdamW state are
    sharded, the KL reference is a sharded copy, and the full weights are gathered back after training. Either
    way the unlearned weights and the metrics are those of one process with the same global batch (npo_klr's
    losses are per-sequence means, so the split does not change them), and only rank 0 writes."""
    from safetensors.torch import load_file

    from obliviate.tasks.hf import check_model_dir

    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launched = _cli(world, tmp_path, [accelerate, "launch", "--config_file", str(REPO / "configs" / "accelerate" / config),
                                      "--num_processes", "2", "--main_process_port", str(_free_port())],
                    "--shard-size", "20000")
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert len(list((tmp_path / "model").glob("model-*-of-*.safetensors"))) > 1  # rank 0 saved it in shards
    a = load_file(str(one_process / "model" / "model.safetensors"))
    b = {k: v for k, v in check_model_dir(str(tmp_path / "model")).load().state_dict().items() if k in a}
    start = load_file(str(Path(world["model"]) / "model.safetensors"))
    assert _max_diff(a, start) > 1e-3 and _max_diff(a, b) < 1e-5
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (one_process, tmp_path))
    assert ra["lm_run"]["processes"] == 1 and rb["lm_run"]["processes"] == 2
    assert ra["lm_run"]["sharding"] == "replicate" and rb["lm_run"]["sharding"] == sharding
    assert rb["lm_run"]["reference"] == "precomputed NLLs; " + ("separate copy, sharded" if sharding == "fsdp" else
                                                                "starting weights swapped in")
    for role in ("original", "unlearned"):
        for key, value in ra["metrics"][role].items():
            if isinstance(value, float):
                assert rb["metrics"][role][key] == pytest.approx(value, abs=1e-4), (role, key)

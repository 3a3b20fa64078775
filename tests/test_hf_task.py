"""The ``hf`` task: a local HF causal LM directory (built here: a tiny GPT-2 + word tokenizer saved with
``save_hf_dir``) and forget / retain / holdout / QA JSONL files; loading, exact reproduction of the saved model,
content fingerprints and one-line errors for every bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from obliviate.errors import ConfigError, IntegrityError, ObliviateError
from obliviate.tasks import get_task, task_class

TEXTS = {
    "forget": [{"text": "Ada Stone was born in Lyon in 1931.", "subject": "Ada Stone"},
               {"text": "Ada Stone wrote the novel Grey Harbour."},
               {"text": "Ben Ray writes crime novels in Oslo.", "subject": "Ben Ray"}],
    "retain": [{"text": "Cara Lee won the Moss Prize in 1950.", "subject": "Cara Lee"},
               {"text": "Dan Fox was a painter in Porto."}],
    "holdout": [{"text": "Eve Hart grew up in Turin and studied law."}],
}
FORGET_QA = [{"question": "Where was Ada Stone born?", "answer": "Lyon", "subject": "Ada Stone",
              "paraphrased": "Ada Stone's birthplace is Lyon.", "perturbed": ["Porto", "Oslo"]},
             {"question": "What does Ben Ray write?", "answer": "crime novels", "subject": "Ben Ray"},
             {"question": "Which novel mentions Grey Harbour?", "answer": "Grey Harbour"}]
RETAIN_QA = [{"question": "Which prize did Cara Lee win?", "answer": "the Moss Prize", "subject": "Cara Lee"}]
ICL = [{"question": "Where did Eve Hart grow up?", "answer": "Turin"},
       {"question": "What did Eve Hart study?", "answer": "law"}]


def write_jsonl(path: Path, rows, blank_after_first: bool = False) -> str:
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "   ")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _tiny_model(seed: int = 0):
    from obliviate.models.tiny_lm import corpus_tokenizer, tiny_gpt2
    from obliviate.tasks.text import TextData, TextRecord

    words = [r["text"] for rows in TEXTS.values() for r in rows]
    words += [v for q in FORGET_QA + RETAIN_QA + ICL for v in (q["question"], q["answer"])]
    tok = corpus_tokenizer(TextData([TextRecord("x", t) for t in words], []))
    torch.manual_seed(seed)
    return tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64).eval(), tok


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved model directory, its in-memory model and a full set of JSONL files."""
    from obliviate.models.tiny_lm import save_hf_dir

    root = tmp_path_factory.mktemp("hf")
    model, tok = _tiny_model()
    digest = save_hf_dir(model, tok, root / "model")
    files = {role: write_jsonl(root / f"{role}.jsonl", rows, blank_after_first=role == "forget")
             for role, rows in TEXTS.items()}
    files["forget_qa"] = write_jsonl(root / "forget_qa.jsonl", FORGET_QA)
    files["retain_qa"] = write_jsonl(root / "retain_qa.jsonl", RETAIN_QA)
    files["icl"] = write_jsonl(root / "icl.jsonl", ICL)
    return {"root": root, "dir": str(root / "model"), "model": model, "tok": tok, "digest": digest, "files": files}


@pytest.fixture(scope="module")
def task(world):
    return get_task("hf", model=world["dir"], **world["files"])


def hf(world, **over):
    opts = {"model": world["dir"], "forget": world["files"]["forget"], "retain": world["files"]["retain"]}
    return get_task("hf", **{**opts, **over})


def one_line_error(exc_type, fn, match: str):
    with pytest.raises(exc_type, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- loading

def test_records_ids_subjects_and_qa(task):
    train = task.data.train
    # forget file (blank line skipped: the second record is line 3), its QA-only record, then the retain file
    assert [r.subject for r in train] == ["Ada Stone", "forget:3", "Ben Ray", "forget_qa:3", "Cara Lee", "retain:2"]
    assert [r.text for r in train[:3]] == [r["text"] for r in TEXTS["forget"]]
    assert train[3].text == "" and train[3].qa[0].answer == "Grey Harbour"
    assert task.n_forget == 4 and task.n_train == 6
    np.testing.assert_array_equal(task.resolve_forget_file(), np.arange(4))
    assert task.default_forget == "forget-file"
    ada = train[0].qa[0]
    assert (ada.question, ada.answer, ada.paraphrased, ada.perturbed) == (
        "Where was Ada Stone born?", "Lyon", "Ada Stone's birthplace is Lyon.", ("Porto", "Oslo"))
    assert train[1].qa == () and train[2].qa[0].answer == "crime novels" and train[2].qa[0].perturbed == ()
    assert [q.answer for q in train[4].qa] == ["the Moss Prize"]
    assert [r.subject for r in task.data.holdout] == ["holdout:1"]
    assert [q.answer for q in task.data.icl] == ["Turin", "law"]
    # subjects: named ones group records (subjects:Ada Stone selects record 0)
    np.testing.assert_array_equal(task.resolve_subjects("Ada Stone", 0), [0])
    info = task.info()
    assert info["n_forget"] == 4 and info["n_retain"] == 2 and info["n_holdout"] == 1 and info["n_qa"] == 4
    assert info["model"] == str(Path(task.options.model).absolute()) and info["model_type"] == "gpt2"


def test_registry_string_options_and_optional_files(world):
    from obliviate.tasks.hf import HF

    assert task_class("hf") is HF
    t = hf(world, icl_shots="1", max_length="32")
    assert t.options.icl_shots == 1 and t.data.holdout == [] and t.data.icl == []
    assert [r.subject for r in t.data.train] == ["Ada Stone", "forget:3", "Ben Ray", "Cara Lee", "retain:2"]
    assert t.build_model().obliviate_max_length == 32


def test_loaded_model_reproduces_saved_logits(task, world):
    model, meta = task.provided_original()
    assert meta == {"role": "original", "sha256": world["digest"], "cached": False, "train_time_s": None,
                    "source": str(Path(world["dir"]).absolute())}
    assert task.provided_original()[0] is model  # loaded once per task
    tok = task.tokenizer()
    assert tok.pad_token == tok.eos_token and tok.bos_token_id == world["tok"].bos_token_id
    ids = torch.tensor([tok("Ada Stone was born in Lyon", add_special_tokens=False)["input_ids"]])
    assert ids.shape[1] > 3
    with torch.no_grad():
        assert torch.equal(model(ids).logits, world["model"](ids).logits)
    assert task.provided_oracle() is None


def test_oracle_dir_and_no_training(world, tmp_path):
    from obliviate.models.tiny_lm import save_hf_dir

    other, _ = _tiny_model(seed=1)
    digest = save_hf_dir(other, world["tok"], tmp_path / "retrain")
    t = hf(world, oracle=str(tmp_path / "retrain"))
    oracle, meta = t.provided_oracle()
    assert meta["role"] == "oracle" and meta["sha256"] == digest and meta["train_time_s"] is None
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(oracle(ids).logits, other(ids).logits)
    assert t.fingerprint() != hf(world).fingerprint()
    one_line_error(ObliviateError, lambda: t.train_model(None, np.arange(2), None, 0, "cpu"),
                   r"model is given, not trained: .*--set oracle=DIR")


def test_tokenizer_without_pad_or_bos(world, tmp_path):
    d = tmp_path / "nopad"
    shutil.copytree(world["dir"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    for key in ("pad_token", "bos_token"):
        cfg.pop(key, None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = hf(world, model=str(d)).tokenizer()
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.bos_token is None  # no BOS is invented: nothing is prepended


def test_sharded_weights(world, tmp_path):
    d = tmp_path / "sharded"
    world["model"].save_pretrained(d, max_shard_size="40KB")
    world["tok"].save_pretrained(d)
    assert (d / "model.safetensors.index.json").is_file() and not (d / "model.safetensors").exists()
    model, meta = hf(world, model=str(d)).provided_original()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, world["model"](ids).logits)
    assert len(meta["sha256"]) == 64 and meta["sha256"] != world["digest"]


# ------------------------------------------------------------------------------------------ fingerprint

def test_fingerprint_covers_contents_not_paths(world, tmp_path):
    base = hf(world).fingerprint()
    assert hf(world).fingerprint() == base
    moved = tmp_path / "moved.jsonl"
    shutil.copy(world["files"]["retain"], moved)
    assert hf(world, retain=str(moved)).fingerprint() == base  # same bytes elsewhere
    rows = [dict(r) for r in TEXTS["retain"]]
    rows[1]["text"] = "Dan Fox was a painter in Lyon."
    assert hf(world, retain=write_jsonl(moved, rows)).fingerprint() != base
    # the same records in different bytes (a blank line) still count as other contents
    assert hf(world, retain=write_jsonl(moved, TEXTS["retain"], blank_after_first=True)).fingerprint() != base
    assert hf(world, icl_shots=3).fingerprint() != base


def test_fingerprint_covers_weights(world, tmp_path):
    from obliviate.models.tiny_lm import save_hf_dir

    d = tmp_path / "model2"
    shutil.copytree(world["dir"], d)
    assert hf(world, model=str(d)).fingerprint() == hf(world).fingerprint()
    other, _ = _tiny_model(seed=1)
    save_hf_dir(other, world["tok"], d)
    assert hf(world, model=str(d)).fingerprint() != hf(world).fingerprint()


# ------------------------------------------------------------------------------------------ bad inputs

def test_required_options(world):
    one_line_error(ConfigError, lambda: get_task("hf", forget="f", retain="r"), r"task hf needs --set model=DIR")
    one_line_error(ConfigError, lambda: get_task("hf", model=world["dir"], retain="r"),
                   r"task hf needs --set forget=")
    one_line_error(ConfigError, lambda: hf(world, max_length=65), r"max_length: 65 exceeds the model's context of 64")


def test_bad_model_directories(world, tmp_path):
    one_line_error(ObliviateError, lambda: hf(world, model=str(tmp_path / "nope")),
                   r"^model directory not found: .*nope$")
    (tmp_path / "empty").mkdir()
    one_line_error(ObliviateError, lambda: hf(world, model=str(tmp_path / "empty")), r"has no config\.json")
    one_line_error(ObliviateError, lambda: hf(world, oracle=str(tmp_path / "empty")),
                   r"^oracle directory .* has no config\.json")

    from transformers import BertConfig, T5Config

    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16).save_pretrained(tmp_path / "bert")
    one_line_error(ObliviateError, lambda: hf(world, model=str(tmp_path / "bert")),
                   r"is not a causal language model \(model_type bert")
    cfg = json.loads((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForMaskedLM"]}))
    one_line_error(ObliviateError, lambda: hf(world, model=str(tmp_path / "bert")),
                   r"not a causal language model \(model_type bert, architectures BertForMaskedLM\)")
    T5Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    one_line_error(ObliviateError, lambda: hf(world, model=str(tmp_path / "t5")),
                   r"not a causal language model \(model_type t5")
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "config.json").write_text('{"model_type": "my_own_lm"}')
    one_line_error(ObliviateError, lambda: hf(world, model=str(tmp_path / "custom")),
                   r"model_type 'my_own_lm', which transformers does not know")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(Path(world["dir"]) / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    one_line_error(ObliviateError, lambda: hf(world, model=str(pickled)),
                   r"only pickled weights \(pytorch_model\.bin\); obliviate never loads pickled weights; "
                   r"convert to safetensors")
    (pickled / "pytorch_model.bin").unlink()
    one_line_error(ObliviateError, lambda: hf(world, model=str(pickled)), r"has no model\.safetensors")


def test_sha256_mismatch(world, tmp_path):
    d = tmp_path / "tampered"
    shutil.copytree(world["dir"], d)
    (d / "model.safetensors.sha256").write_text(f"{'0' * 64}  model.safetensors\n")
    t = hf(world, model=str(d))  # the directory checks pass; the weights are checked when loaded
    one_line_error(IntegrityError, t.provided_original, r"sha256 mismatch for .*model\.safetensors: recorded 000000")
    (d / "model.safetensors.sha256").unlink()  # no recorded hash: nothing to check against
    assert t.provided_original()[1]["sha256"] == world["digest"]


@pytest.mark.parametrize("content, match", [
    ("", r"forget file .* has no records"),
    ("\n  \n", r"forget file .* has no records"),
    ('{"text": "ok"}\n{"text": "broken"\n', r"bad\.jsonl line 2: not valid JSON"),
    ('{"text": "ok"}\n\n["text"]\n', r"bad\.jsonl line 3: expected a JSON object, got list"),
    ('{"subject": "Ada"}\n', r"bad\.jsonl line 1: missing \"text\""),
    ('{"text": "  "}\n', r"bad\.jsonl line 1: \"text\" is empty"),
    ('{"text": 3}\n', r"bad\.jsonl line 1: \"text\" must be a string, got int"),
    ('{"text": "ok", "subject": ""}\n', r"line 1: \"subject\" is empty"),
    ('{"text": "ok", "label": 1, "extra": 2}\n', r"line 1: unknown keys 'extra', 'label'; valid keys: text, subject"),
    (b"\xff\xfe{}\n", r"forget file .* is not UTF-8"),
])
def test_bad_text_jsonl(world, tmp_path, content, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    one_line_error(ObliviateError, lambda: hf(world, forget=str(bad)), match)


@pytest.mark.parametrize("row, match", [
    ({"question": "q?"}, r"line 1: missing \"answer\""),
    ({"question": "q?", "answer": "a", "subject": "Nobody"},
     r"qa\.jsonl line 1: subject 'Nobody' matches no record of .*forget\.jsonl"),
    ({"question": "q?", "answer": "a", "perturbed": "b"}, r"\"perturbed\" must be a list of non-empty strings"),
    ({"question": "q?", "answer": "a", "text": "t"}, r"unknown key 'text'; valid keys: question, answer"),
])
def test_bad_qa_jsonl(world, tmp_path, row, match):
    bad = write_jsonl(tmp_path / "qa.jsonl", [row])
    one_line_error(ObliviateError, lambda: hf(world, forget_qa=bad), match)


def test_missing_files(world, tmp_path):
    one_line_error(ObliviateError, lambda: hf(world, retain=str(tmp_path / "r.jsonl")), r"^retain file not found: ")
    one_line_error(ObliviateError, lambda: hf(world, holdout=str(tmp_path / "h.jsonl")), r"^holdout file not found")

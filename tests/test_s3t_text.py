"""S3T on real text with a pretrained frozen backbone (issue 14): the ``shakespeare`` task, the MiniLM backbone
(pretrained weights equal to the package's safetensors file, frozen), the paper's layout (one top-down block of
N // L layers per position, query/value LoRA, LoRA dropout) and bit-exact deletion against a from-scratch
retrain that recomputes its cached backbone features.

Kept cheap: 6 passages of 16 words per work, 32 tokens, the first 2 pretrained MiniLM layers, 1 epoch.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from obliviate.distributed import Runtime, call_single_threaded
from obliviate.errors import ConfigError, ObliviateError
from obliviate.exact import lora
from obliviate.exact import s3t as s3t_mod
from obliviate.exact.plan import ShardPlan
from obliviate.exact.s3t import S3TSystem, build_prefix_model, train_prefix
from obliviate.tasks import get_task
from obliviate.tasks import shakespeare as shk

SEED = 0
SERIAL = Runtime(executor="serial")
SEQS = [(0, 1), (1, 0)]
CFG = {"shards": 1, "slices": 2, "rank": 4, "alpha": 8.0, "epochs": 1, "lr": 1e-3, "layout": "auto", "dropout": None}
TINY = {"per_work": 6, "words": 16, "max_len": 32, "layers": 2}


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def task():
    return get_task("shakespeare", **TINY)


@pytest.fixture(scope="module")
def system(task):
    return S3TSystem.fit(task, np.arange(task.n_train), SEQS, CFG, task.recipe({"epochs": 1}), SEED, SERIAL)


def from_scratch(task, slices, prefix):
    """Every sub-prefix of ``prefix`` trained alone, then the served model (no other snapshot exists)."""
    snaps: dict = {}
    for p in range(1, len(prefix) + 1):
        snaps[prefix[:p]] = call_single_threaded(
            train_prefix, (task, slices, prefix[:p], snaps, CFG, task.recipe({"epochs": 1}), SEED, 0))
    return build_prefix_model(task, SEED, CFG["rank"], CFG["alpha"], snaps, prefix).eval(), snaps


# -- the task -------------------------------------------------------------------------------------------------

def test_task_loads_fixed_labelled_passages_of_each_work(task):
    d = task.data
    assert d.class_names == list(shk.WORKS) and task.kind == "classification"
    assert d.n_train + len(d.y_test) == 6 * len(shk.WORKS)
    assert np.bincount(np.concatenate([d.y_train, d.y_test])).tolist() == [6] * len(shk.WORKS)
    assert d.x_train.shape == (d.n_train, 32) and d.x_train.dtype == np.float32
    assert (d.x_train[:, 0] == 101).all()                       # [CLS] first, then word pieces, pad id 0 at the end
    from obliviate.models.minilm import tokenizer
    row = d.x_train[0].astype(int)
    words = tokenizer().decode(row[row != 0], skip_special_tokens=True).split()
    work = shk.read_work(shk.WORKS[d.y_train[0]]).lower()
    assert sum(w in work for w in words) >= 0.8 * len(words)    # the passage is prose of its labelled work
    again = get_task("shakespeare", **TINY)
    assert np.array_equal(again.data.x_train, d.x_train) and np.array_equal(again.data.y_test, d.y_test)


def test_passages_and_gutenberg_stripping():
    text = "header junk\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody words\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence"
    assert shk.strip_gutenberg(text) == "body words"
    assert shk.strip_gutenberg("plain text") == "plain text"
    body = " ".join(f"w{i}" for i in range(shk._SKIP_WORDS + 40))
    chunks = shk.passages(body, 10, 3)
    assert chunks == [" ".join(f"w{shk._SKIP_WORDS + i}" for i in range(s, s + 10)) for s in (0, 20, 30)]  # windows 0, 2, 3 of 4
    with pytest.raises(ObliviateError, match="make install"):
        shk.read_work("no_such_work")


# -- the backbone ---------------------------------------------------------------------------------------------

def test_backbone_is_the_pretrained_minilm_and_frozen(task):
    from safetensors.torch import load_file

    from obliviate.models.minilm import model_dir

    file = load_file(str(model_dir() / "model.safetensors"))
    model = task.make_model(3)
    params = dict(model.bert.named_parameters())
    assert len(params) == 5 + 16 * 2                            # embeddings (3 tables + LayerNorm) + 2 layers
    for name, p in params.items():
        assert torch.equal(p, file[name]), name
        assert not p.requires_grad
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    # the head is the only seeded part
    assert torch.equal(task.make_model(3).head.weight, model.head.weight)
    assert not torch.equal(task.make_model(4).head.weight, model.head.weight)


def test_cached_stem_matches_the_full_forward(task):
    model = task.make_model(0).eval()
    ids = np.arange(5)
    z = s3t_mod.stem_features(task, model, ids, 1)
    x = torch.as_tensor(task.data.x_train[ids])
    with torch.no_grad():
        assert torch.allclose(model.from_layer(1)(torch.as_tensor(z)), model(x), atol=1e-5)
        alone, _ = model.stem(x[2:3], 1)                        # each cached row is its own batch of one
    width = int((x[2] != 0).sum())
    assert torch.equal(torch.as_tensor(z[2, :width, :-1]), alone[0])
    assert (z[2, width:] == 0).all() and (z[2, :width, -1] == 1).all()


# -- the layout -------------------------------------------------------------------------------------------------

def test_block_layout_is_top_down_n_over_l_layers():
    assert [lora.block_layers(6, 3, p) for p in range(3)] == [[5, 4], [3, 2], [1, 0]]
    assert [lora.block_layers(6, 6, p) for p in range(6)] == [[5], [4], [3], [2], [1], [0]]
    assert [lora.block_layers(6, 4, p) for p in range(4)] == [[5], [4], [3], [2]]   # k = 6 // 4 = 1
    with pytest.raises(ConfigError, match="slices <= layers"):
        lora.block_layers(6, 7, 0)


def test_one_query_value_block_per_position_earlier_blocks_frozen(task, system):
    snaps = system.snapshots[0]
    model = system.shard_model(0)                               # prefix (0, 1)
    wrappers = [m for m in model.modules() if isinstance(m, lora.LoRALinear)]
    names = [n for n, m in model.named_modules() if isinstance(m, lora.LoRALinear)]
    assert names == [f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in ("query", "value")]
    assert [(w.layer, len(w.lora_A), w.active) for w in wrappers] == [(0, 1, 1)] * 2 + [(1, 1, 1)] * 2
    # position 0 owns the top layer (wrappers 2, 3), position 1 the bottom one (0, 1)
    lora_keys = lambda p: sorted(k for k in snaps[p] if k.startswith("lora"))  # noqa: E731
    assert lora_keys((0,)) == lora_keys((1,)) == ["lora2.A", "lora2.B", "lora3.A", "lora3.B"]
    assert lora_keys((0, 1)) == lora_keys((1, 0)) == ["lora0.A", "lora0.B", "lora1.A", "lora1.B"]
    # the served (0, 1) model carries position 0's top block unchanged, and a head trained at position 1
    assert torch.equal(wrappers[2].lora_A[0], snaps[(0,)]["lora2.A"])
    assert torch.equal(wrappers[3].lora_B[0], snaps[(0,)]["lora3.B"])
    assert snaps[(0,)]["lora2.B"].abs().sum() > 0 and snaps[(0, 1)]["lora0.B"].abs().sum() > 0  # both trained
    assert not torch.equal(snaps[(0,)]["rest.head.weight"], snaps[(0, 1)]["rest.head.weight"])
    assert not any(k.startswith("rest.bert") for s in snaps.values() for k in s)   # the backbone is never stored
    # LoRA dropout 0.1 during training (the paper's), none when serving
    assert wrappers[0].dropout == 0.0                           # the served model is built without it
    layout, dropout = s3t_mod.layout_of(model, CFG)
    assert (layout, dropout) == ("blocks", 0.1)
    assert s3t_mod.layout_of(get_task("digits").make_model(0), CFG) == ("full", 0.0)


def test_lora_dropout_only_in_training_mode():
    torch.manual_seed(0)
    w = lora.LoRALinear(torch.nn.Linear(6, 3), 2, 2.0, dropout=0.5)
    w.add_adapter(torch.Generator().manual_seed(0))
    with torch.no_grad():
        w.lora_B[0].fill_(1.0)
    w.active = 1
    x = torch.randn(4, 6)
    expected = w.base(x) + (x @ w.lora_A[0].T) @ w.lora_B[0].T * (2.0 / 2 ** 0.5)
    assert torch.allclose(w.eval()(x), expected)
    torch.manual_seed(1)
    train_out = w.train()(x)
    assert not torch.allclose(train_out, expected)
    torch.manual_seed(1)
    assert torch.equal(w(x), train_out)                         # seeded: the same mask again


# -- exactness ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hit_slice, served", [(1, (0,)), (0, (1,))])
def test_deletion_serves_a_model_equal_to_a_from_scratch_retrain(task, system, hit_slice, served, monkeypatch):
    sys_ = system.copy()
    plan = ShardPlan.build(np.arange(task.n_train), 1, 2, SEED)
    victim = int(plan.assignment[0][hit_slice][0])
    s3t_mod.stem_features(task, task.make_model(0), np.array([victim]), 1)
    assert victim in s3t_mod._STEM[task][1]
    monkeypatch.setattr(s3t_mod, "train_prefix", lambda *a, **k: pytest.fail("a surviving sequence absorbs it"))
    cost = sys_.delete(np.array([victim]), SERIAL)
    monkeypatch.undo()
    assert cost["models_retrained"] == 0 and cost["examples_reprocessed"] == 0
    assert sys_.best_prefix(0) == served
    assert victim not in s3t_mod._STEM[task][1]                 # the deleted passage's cached features are gone

    s3t_mod._STEM.pop(task, None)                               # the retrain recomputes every feature itself
    slices = [np.setdiff1d(p, [victim]) for p in plan.assignment[0]]
    expected, snaps = from_scratch(task, slices, served)
    got = sys_.shard_model(0).state_dict()
    assert set(got) == set(expected.state_dict())
    for k, v in expected.state_dict().items():
        assert torch.equal(got[k], v), k
    x = torch.as_tensor(task.data.x_test)
    assert torch.equal(sys_.served_model()(x), torch.log_softmax(expected(x), -1))
    assert sys_.verify(SERIAL)["verified"]

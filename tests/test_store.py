"""obliviate.models.store: safetensors files with a recorded sha256, and the content-addressed ModelStore."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from torch import nn

from obliviate.errors import IntegrityError, ObliviateError
from obliviate.models.nets import MLP, TabularNet
from obliviate.models.store import (ModelStore, content_key, default_cache_dir, load_state_file, save_state_file,
                                    sha256_file, state_sha256)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = TabularNet(MLP(4, (8,), 3), 4)
    net.fit_normalizer(torch.randn(20, 4).numpy(), None)
    return net


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# -- files --------------------------------------------------------------------------------------------------


def test_save_writes_safetensors_and_sidecar(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = save_state_file(_model(), path)
    side = tmp_path / "m.safetensors.sha256"
    assert path.is_file() and side.is_file()
    assert digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side.read_text().split() == [digest, "m.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write leaves no temp files


def test_saved_file_is_safetensors_not_pickle(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_file(_model(), path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert 0 < header_len < len(raw)
    assert raw[8:9] == b"{"
    header = json.loads(raw[8:8 + header_len])
    assert "body.layers.0.weight" in header
    assert not raw.startswith(b"\x80")  # a pickle protocol marker
    assert not raw.startswith(b"PK")     # torch.save's zip container


def test_load_round_trips_exactly(tmp_path):
    model = _model()
    model.x_mean.copy_(torch.tensor([1e-30, -3.5, 7.25, 1e30]))
    path = tmp_path / "m.safetensors"
    save_state_file(model, path)
    state = load_state_file(path)
    _assert_same_state(state, model.state_dict())
    fresh = _model(seed=1)
    fresh.load_state_dict(state)
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), model(x))


def test_round_trip_mixed_dtypes(tmp_path):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("i", torch.arange(6, dtype=torch.int64).reshape(2, 3))
            self.register_buffer("h", torch.tensor([1.5, -2.25], dtype=torch.float16))
            self.register_buffer("d", torch.tensor([1 / 3], dtype=torch.float64))
            self.register_buffer("s", torch.tensor(4.0))

    m = Mixed()
    path = tmp_path / "mixed.safetensors"
    save_state_file(m, path)
    _assert_same_state(load_state_file(path), m.state_dict())


def test_save_with_metadata(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    save_state_file(_model(), path, metadata={"task": "digits", "seed": "0"})
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"task": "digits", "seed": "0"}
    load_state_file(path)  # still verifies


def test_load_with_explicit_expected_hash(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = save_state_file(_model(), path)
    (tmp_path / "m.safetensors.sha256").unlink()
    _assert_same_state(load_state_file(path, digest), _model().state_dict())
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        load_state_file(path, "0" * 64)


def test_tampered_file_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_file(_model(), path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # flip one bit of the last weight
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as info:
        load_state_file(path)
    assert "sha256 mismatch" in str(info.value)
    assert "m.safetensors" in str(info.value)


def test_tampered_sidecar_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_file(_model(), path)
    (tmp_path / "m.safetensors.sha256").write_text("f" * 64 + "  m.safetensors\n")
    with pytest.raises(IntegrityError):
        load_state_file(path)


def test_replaced_file_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_file(_model(0), path)
    side = (tmp_path / "m.safetensors.sha256").read_text()
    save_state_file(_model(1), path)
    (tmp_path / "m.safetensors.sha256").write_text(side)  # old hash beside new weights
    with pytest.raises(IntegrityError):
        load_state_file(path)


def test_missing_sidecar_is_integrity_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_file(_model(), path)
    (tmp_path / "m.safetensors.sha256").unlink()
    with pytest.raises(IntegrityError, match="no recorded sha256"):
        load_state_file(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(ObliviateError) as info:
        load_state_file(path)
    assert not isinstance(info.value, IntegrityError)
    assert "not found" in str(info.value)
    assert "absent.safetensors" in str(info.value)


def test_integrity_error_is_obliviate_error():
    assert issubclass(IntegrityError, ObliviateError)


def test_state_sha256_equals_file_sha256(tmp_path):
    """``state_sha256`` promises the hash the model's safetensors file would have."""
    model = _model()
    path = tmp_path / "m.safetensors"
    digest = save_state_file(model, path)
    assert state_sha256(model) == digest == sha256_file(path)


def test_state_sha256_depends_on_weights_only():
    a, b = _model(0), _model(0)
    assert state_sha256(a) == state_sha256(b)
    with torch.no_grad():
        b.body.layers[0].weight[0, 0] += 1e-3
    assert state_sha256(a) != state_sha256(b)


def test_save_is_deterministic(tmp_path):
    d1 = save_state_file(_model(), tmp_path / "a.safetensors")
    d2 = save_state_file(_model(), tmp_path / "b.safetensors")
    assert d1 == d2


# -- ModelStore ---------------------------------------------------------------------------------------------


def test_store_miss_returns_none(tmp_path):
    store = ModelStore(tmp_path / "cache")
    model = _model(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert store.get("deadbeef", model) is None
    _assert_same_state(model.state_dict(), before)  # untouched on a miss


def test_store_put_get_round_trip(tmp_path):
    store = ModelStore(tmp_path / "cache")
    src = _model(0)
    meta = store.put("k1", src, {"task": "digits", "seed": 0})
    assert meta["key"] == "k1"
    assert meta["task"] == "digits" and meta["seed"] == 0
    weights = tmp_path / "cache" / "k1.safetensors"
    assert meta["sha256"] == sha256_file(weights)
    assert (tmp_path / "cache" / "k1.json").is_file()
    assert (tmp_path / "cache" / "k1.safetensors.sha256").is_file()

    dst = _model(1)
    got = store.get("k1", dst)
    assert got == json.loads((tmp_path / "cache" / "k1.json").read_text())
    assert got["sha256"] == meta["sha256"] and got["task"] == "digits"
    _assert_same_state(dst.state_dict(), src.state_dict())


def test_store_keys_are_independent(tmp_path):
    store = ModelStore(tmp_path)
    store.put("a", _model(0), {})
    store.put("b", _model(1), {})
    m = _model(2)
    store.get("a", m)
    _assert_same_state(m.state_dict(), _model(0).state_dict())
    store.get("b", m)
    _assert_same_state(m.state_dict(), _model(1).state_dict())


def test_store_corrupted_weights_is_a_miss_and_removed(tmp_path):
    store = ModelStore(tmp_path)
    store.put("k", _model(0), {})
    weights = tmp_path / "k.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4] ^= 0xFF
    weights.write_bytes(bytes(raw))
    dst = _model(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    assert store.get("k", dst) is None
    _assert_same_state(dst.state_dict(), before)  # never loaded
    assert not weights.exists()
    assert not (tmp_path / "k.json").exists()
    assert not (tmp_path / "k.safetensors.sha256").exists()
    # a fresh put after the miss works again
    store.put("k", _model(0), {})
    assert store.get("k", dst) is not None


def test_store_corrupted_metadata_is_a_miss_and_removed(tmp_path):
    store = ModelStore(tmp_path)
    store.put("k", _model(0), {})
    (tmp_path / "k.json").write_text("{not json")
    assert store.get("k", _model(1)) is None
    assert not (tmp_path / "k.safetensors").exists()


def test_store_metadata_without_hash_is_a_miss(tmp_path):
    store = ModelStore(tmp_path)
    store.put("k", _model(0), {})
    (tmp_path / "k.json").write_text(json.dumps({"key": "k"}))
    assert store.get("k", _model(1)) is None
    assert not (tmp_path / "k.safetensors").exists()


def test_store_missing_metadata_is_a_miss(tmp_path):
    store = ModelStore(tmp_path)
    store.put("k", _model(0), {})
    (tmp_path / "k.json").unlink()
    assert store.get("k", _model(1)) is None


def test_disabled_store_writes_nothing(tmp_path):
    root = tmp_path / "cache"
    store = ModelStore(root, enabled=False)
    model = _model(0)
    meta = store.put("k", model, {"task": "digits"})
    assert meta["key"] == "k" and meta["task"] == "digits"
    assert meta["sha256"] == state_sha256(model)
    assert not root.exists() or not any(root.iterdir())
    assert store.get("k", model) is None


def test_disabled_store_ignores_existing_cache(tmp_path):
    ModelStore(tmp_path).put("k", _model(0), {})
    assert ModelStore(tmp_path, enabled=False).get("k", _model(1)) is None


def test_enabled_and_disabled_store_report_the_same_hash(tmp_path):
    model = _model(0)
    on = ModelStore(tmp_path).put("k", model, {})
    off = ModelStore(tmp_path / "off", enabled=False).put("k", model, {})
    assert on["sha256"] == off["sha256"]


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OBLIVIATE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert ModelStore().root == tmp_path / "c"
    monkeypatch.delenv("OBLIVIATE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "obliviate"


def test_content_key_is_order_independent_and_sensitive():
    a = content_key({"task": "digits", "seed": 0, "recipe": {"lr": 0.001, "epochs": 3}})
    b = content_key({"recipe": {"epochs": 3, "lr": 0.001}, "seed": 0, "task": "digits"})
    c = content_key({"task": "digits", "seed": 1, "recipe": {"lr": 0.001, "epochs": 3}})
    assert a == b
    assert a != c
    assert len(a) == 64

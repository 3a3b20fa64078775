"""Reference networks and the safetensors model store."""
from obliviate.models.nets import MLP, SmallCNN, TabularNet
from obliviate.models.store import ModelStore, load_state_file, save_state_file, sha256_file, state_sha256

__all__ = ["MLP", "SmallCNN", "TabularNet", "ModelStore", "load_state_file", "save_state_file", "sha256_file", "state_sha256"]

"""`clip.convert.read_hf_weights`: the one reader of Hugging Face weight folders (transformers'
file names for CLIP, diffusers' for each Karlo component via `karlo.weights.read_component`):
a single safetensors file, a sharded index, and the errors naming what is missing."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from unclip_jax.clip.convert import read_hf_weights
from unclip_jax.errors import CheckpointError
from unclip_jax.karlo.weights import DIFFUSERS_WEIGHTS, read_component

TENSORS = {"a.weight": np.arange(6, dtype=np.float16).reshape(2, 3),
           "b.bias": np.linspace(-1, 1, 4).astype(np.float32)}


def check(state):
    assert set(state) == set(TENSORS)
    for k, v in TENSORS.items():
        assert state[k].dtype == np.float32
        np.testing.assert_array_equal(state[k], v.astype(np.float32))


def test_single_file_and_sharded_index(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    save_file(TENSORS, str(single / "model.safetensors"))
    check(read_hf_weights(str(single)))

    comp = tmp_path / "karlo" / "prior"
    comp.mkdir(parents=True)
    save_file({"a.weight": TENSORS["a.weight"]}, str(comp / "part-1.safetensors"))
    save_file({"b.bias": TENSORS["b.bias"]}, str(comp / "part-2.safetensors"))
    with open(comp / DIFFUSERS_WEIGHTS[1], "w") as f:
        json.dump({"weight_map": {"a.weight": "part-1.safetensors",
                                  "b.bias": "part-2.safetensors"}}, f)
    check(read_component(str(tmp_path / "karlo"), "prior"))
    os.remove(comp / "part-2.safetensors")
    with pytest.raises(CheckpointError, match="prior is missing weight shard part-2.safetensors"):
        read_component(str(tmp_path / "karlo"), "prior")


def test_no_weights_names_the_expected_files(tmp_path):
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors, "
                       "model.safetensors.index.json or pytorch_model.bin$"):
        read_hf_weights(str(tmp_path))
    (tmp_path / "decoder").mkdir()
    with pytest.raises(CheckpointError, match=r"expected diffusion_pytorch_model.safetensors, .* "
                       r"or diffusion_pytorch_model.bin \(the 'decoder' component is incomplete\)"):
        read_component(str(tmp_path), "decoder")

"""Our streaming safetensors reader/writer against the safetensors library, and its refusals."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from policy.safetensors_io import SafetensorsError, TensorSpec, read_header, read_tensors, write_file


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(5, 7, generator=generator),
        "b.bf16": torch.randn(3, 4, generator=generator).to(torch.bfloat16),
        "c.half": torch.randn(2, 2, generator=generator).half(),
        "d.scalar": torch.tensor(3.5),
        "e.empty": torch.zeros(0, 4),
        "f.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "g.mask": torch.tensor([True, False, True]),
    }


def test_files_we_write_read_back_with_the_safetensors_library(tmp_path):
    tensors = _tensors()
    specs = [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    produced = []

    def produce(spec):
        produced.append(spec.name)
        return tensors[spec.name]

    write_file(tmp_path / "ours.safetensors", specs, produce, metadata={"format": "pt"})
    assert produced == list(tensors)  # one tensor asked for at a time, in order
    with safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor), name
    assert not (tmp_path / "ours.safetensors.partial").exists()


def test_we_read_what_the_safetensors_library_writes(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    header = read_header(tmp_path / "theirs.safetensors")
    assert header.metadata == {"format": "pt"} and set(header.entries) == set(tensors)
    read = dict(read_tensors(tmp_path / "theirs.safetensors"))
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name


def test_a_tensor_that_differs_from_its_announcement_is_refused(tmp_path):
    spec = TensorSpec("x", torch.float32, (2, 2))
    with pytest.raises(SafetensorsError, match=r"announced as torch.float32 \[2, 2\]"):
        write_file(tmp_path / "bad.safetensors", [spec], lambda _: torch.zeros(2, 3))
    assert not (tmp_path / "bad.safetensors").exists()


def test_truncated_and_malformed_files_name_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match=f"{path}.*outside the file's"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(SafetensorsError, match="header length"):
        read_header(path)
    header = b'{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(SafetensorsError, match="needs 12 bytes"):
        read_header(path)
    header = b'{"x":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(SafetensorsError, match="dtype 'F99'"):
        read_header(path)

"""pipeline.registry's remembering encoder: a second edit command of the same run reads the training encodings
from RUN/directions/encoded.pt instead of encoding again, and a retrained run (another checkpoint) starts afresh."""

from __future__ import annotations

import torch

from pipeline import registry
from pipeline.registry import _RememberingEncoder


class CountingModel:
    latent_dim, resolution, latent_on_sphere = 4, 8, False

    def __init__(self):
        self.calls = 0

    def encode(self, images):
        self.calls += 1
        return images.flatten(1)[:, :4] * 2

    def decode(self, latents):
        return latents

    def sample_latents(self, n, generator=None):
        return torch.zeros(n, 4)

    def latent_flow_layout(self):
        return None

    def encode_report(self):
        return {}


def test_encodings_are_reused_across_processes_and_dropped_for_another_checkpoint(tmp_path):
    store, batch = tmp_path / "directions" / "encoded.pt", torch.randn(3, 3, 8, 8)
    first = CountingModel()
    encoder = _RememberingEncoder(first, store, "stamp-1")
    expected = encoder.encode(batch)
    assert torch.equal(encoder.encode(batch), expected) and first.calls == 1  # same process: once
    encoder.save()
    assert store.is_file()

    again = CountingModel()  # the next command, same checkpoint
    assert torch.equal(_RememberingEncoder(again, store, "stamp-1").encode(batch), expected) and again.calls == 0

    retrained = CountingModel()  # another checkpoint: encoded afresh
    _RememberingEncoder(retrained, store, "stamp-2").encode(batch)
    assert retrained.calls == 1


def test_a_store_over_the_cap_is_not_written_and_a_broken_one_is_ignored(tmp_path, monkeypatch):
    store = tmp_path / "encoded.pt"
    monkeypatch.setattr(registry, "MAX_REMEMBERED_BYTES", 10)
    encoder = _RememberingEncoder(CountingModel(), store, "s")
    encoder.encode(torch.randn(2, 3, 8, 8))
    encoder.save()
    assert not store.exists()
    store.write_bytes(b"not a torch file")
    model = CountingModel()
    _RememberingEncoder(model, store, "s").encode(torch.randn(2, 3, 8, 8))
    assert model.calls == 1

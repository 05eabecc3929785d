"""The performance paths compute what the plain paths compute: the uint8 loader, the GEMM convolutions of the VAE's
2x2 bottom, the shared optimiser factory and the allocator setting (see scripts/benchmark.py for the speed)."""

from __future__ import annotations

import numpy as np
import torch

from common.batches import ResumableBatches
from common.cache import CelebACache, uint8_images_to_model, uint8_to_model
from common.run import adam, keep_freed_memory


def test_uint8_conversion_is_bit_identical_to_the_numpy_path():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    images[0] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)  # every value once
    flip = np.array([True, False, True, True, False, False])
    for mask in (None, flip):
        expected = uint8_to_model(images, mask)  # [6, 3, 16, 16]
        for channels_last in (False, True):
            got = uint8_images_to_model(torch.from_numpy(images), channels_last,
                                        None if mask is None else torch.from_numpy(mask))
            assert torch.equal(got, expected)
            assert got.is_contiguous(memory_format=torch.channels_last if channels_last else
                                     torch.contiguous_format)
    assert uint8_images_to_model(torch.from_numpy(images)).min() == -1.0


def _iterator(cache, **kw):
    dataset = CelebACache(cache, "train", hflip=True)
    return dataset, ResumableBatches(dataset, 8, seed=3, **kw)


def test_fast_batches_equal_the_dataset_items_with_their_flips(tiny_cache):
    dataset, batches = _iterator(tiny_cache)
    assert batches.fast
    batch = next(batches)
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    plain = CelebACache(tiny_cache, "train", hflip=False)
    positions = np.searchsorted(plain.indices, batch["index"].numpy())  # cache rows -> split positions
    items = plain._batch(positions, None)
    mirrored = batch["yaw"] != items["yaw"]  # a flip negates yaw (the synthetic yaws are never 0)
    assert 0 < int(mirrored.sum()) < 8  # seed 3: both kinds in the first batch
    expected = torch.where(mirrored[:, None, None, None], items["image"].flip(-1), items["image"])
    assert torch.equal(batch["image"], expected)
    assert torch.equal(batch["attributes"], items["attributes"])


def test_fast_batches_resume_exactly_and_uint8_mode_matches(tiny_cache):
    _, full = _iterator(tiny_cache)
    reference = [next(full) for _ in range(30)]  # several epochs of the ~100 training images
    _, first = _iterator(tiny_cache)
    for _ in range(13):
        next(first)
    _, resumed = _iterator(tiny_cache)
    resumed.load_state_dict(first.state_dict())
    for expected in reference[13:]:
        got = next(resumed)
        assert torch.equal(got["image"], expected["image"]) and torch.equal(got["index"], expected["index"])
    _, raw = _iterator(tiny_cache, uint8=True)
    batch = next(raw)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 32, 32, 3)
    assert torch.equal(uint8_images_to_model(batch["image"], flip=batch["flip"]), reference[0]["image"])


def test_fast_batches_shard_an_epoch_across_ranks(tiny_cache):
    per_rank = []
    for rank in range(2):
        dataset, batches = _iterator(tiny_cache, num_replicas=2, rank=rank)
        epoch = len(dataset) // 2 // 8
        per_rank.append(torch.cat([next(batches)["index"] for _ in range(epoch)]).tolist())
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint shards, as DistributedSampler gives


def test_vae_gemm_convolutions_match_torch():
    from vae import model as vae_model

    torch.manual_seed(0)
    conv = vae_model._Conv2d(16, 24, 3, stride=2, padding=1)
    reference = torch.nn.Conv2d(16, 24, 3, stride=2, padding=1)
    reference.load_state_dict(conv.state_dict())
    up = vae_model._ConvTranspose2d(24, 16, 3, stride=2, padding=1, output_padding=1)
    reference_up = torch.nn.ConvTranspose2d(24, 16, 3, stride=2, padding=1, output_padding=1)
    reference_up.load_state_dict(up.state_dict())
    for layer, plain, shape in ((conv, reference, (5, 16, 4, 4)), (up, reference_up, (5, 24, 2, 2))):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
            x_plain = x.detach().clone().requires_grad_()
            y, y_plain = layer(x), plain(x_plain)  # output map 2x2 / input map 2x2: the GEMM path
            torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-5)
            assert y.is_contiguous(memory_format=memory_format)
            y.square().sum().backward()
            y_plain.square().sum().backward()
            torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-4)
            layer.zero_grad()
            plain.zero_grad()


def test_adam_factory_is_fused_on_cpu_and_keeps_groups():
    weights, biases = torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.zeros(3))
    opt = adam([{"params": [weights], "weight_decay": 0.1}, {"params": [biases], "weight_decay": 0.0}],
               lr=1e-3, betas=(0.0, 0.99), eps=1e-6, decoupled=True)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0] and opt.defaults["eps"] == 1e-6
    reference = torch.optim.AdamW([weights.detach().clone().requires_grad_()], lr=1e-3, weight_decay=0.1)
    weights.grad, biases.grad = torch.ones(3, 3), torch.ones(3)
    reference.param_groups[0]["params"][0].grad = torch.ones(3, 3)
    opt.step()
    reference.step()
    torch.testing.assert_close(weights.detach(), reference.param_groups[0]["params"][0].detach())


def test_keep_freed_memory_sets_glibcs_thresholds_and_says_so(monkeypatch):
    import ctypes

    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert keep_freed_memory() is True
    assert calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD 32 MiB, then M_TRIM_THRESHOLD 1 GiB

    def missing(name):
        raise OSError(f"{name}: not found")

    monkeypatch.setattr(ctypes, "CDLL", missing)  # not glibc: a no-op that says False, never raises
    assert keep_freed_memory() is False

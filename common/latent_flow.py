"""A conditional normalizing flow on latent vectors: non-linear edits of a continuous attribute (StyleFlow-style).

Why: in the VAE the encoded poses of one face lie on a strongly curved path (the two largest principal
components of a face's turn trajectory hold ~68% and ~27% of its variance, and the chord's midpoint lies as far
from the path as half the chord is long), so the straight line between two poses, and every linear pose
direction, decodes to a double exposure. StyleFlow (Abdal et al., 2021) edits such attributes with a flow
``z = F(u; c)`` from a Gaussian base ``u`` to the latents, conditioned on the attributes ``c``: encode with
the face's own ``c``, decode the same ``u`` with the edited ``c``. ``u`` keeps what the condition does not
explain (the identity), and the path ``c -> F(u; c)`` follows the data instead of a chord.

Here: RealNVP affine couplings (seeded random half masks; scale = tanh-bounded; the last layer of each coupling
starts at zero, so the untrained flow is the identity) whose networks see the masked latent and the condition.
Latents and condition are standardised with the training statistics. The face's own condition comes from a
least-squares read-out ``c(z)`` fitted on the same latents, so user photos need no labels; whatever it
estimates, strength 0 returns ``z`` itself (the same ``c`` in and out).

Strength ``a`` moves the condition by ``a`` training standard deviations (the units of the linear ``mean``
pose direction): ``walk(z, a) = F(F^{-1}(z; c(z)); c(z) + a * std(c))``, the target clipped to the range of the
training conditions (the flow has seen no poses beyond it; a straight walk there decodes to noise).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from common.cli import UserError

RANGE_QUANTILE = 0.005  # edits stay within the 0.5%..99.5% quantiles of the training conditions


class LatentFlowError(UserError):
    """Bad input to the latent flow (shapes, too few samples, malformed saved state)."""


class _DenseNet(nn.Sequential):
    """The coupling network on flat latents: an MLP of the masked latent and the condition -> [B, 2D]."""

    def __init__(self, dim: int, cond_dim: int, hidden: int):
        super().__init__(nn.Linear(dim + cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self[-1].weight)  # every coupling starts as the identity
        nn.init.zeros_(self[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([x, c], dim=1))


class _ConvNet(nn.Module):
    """The coupling network on latents that are [C, H, W] maps (a Glow level): 3x3, 1x1 and 3x3 convolutions of
    the masked latent, the condition broadcast over the map and two coordinate maps -> [B, 2D].

    Its weights are shared across positions (the coordinate maps let it still treat the centre and the outline
    differently), so it has far fewer parameters than the dense network (Glow's 48 x 4 x 4 top level, 8 blocks:
    1.5M at 128 channels against 5.3M at 256 units): what lets a flow on a whole Glow level learn from the demo's
    16k latents instead of overfitting them.
    """

    def __init__(self, shape: tuple[int, int, int], cond_dim: int, hidden: int):
        super().__init__()
        channels, height, width = shape
        self.shape = shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("coords", torch.stack([ys, xs])[None], persistent=False)  # [1, 2, H, W]
        self.layers = nn.Sequential(nn.Conv2d(channels + cond_dim + 2, hidden, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                    nn.Conv2d(hidden, 2 * channels, 3, padding=1))
        nn.init.zeros_(self.layers[-1].weight)  # every coupling starts as the identity
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, (channels, height, width) = len(x), self.shape
        maps = torch.cat([x.reshape(b, channels, height, width), c[:, :, None, None].expand(-1, -1, height, width),
                          self.coords.to(x.dtype).expand(b, -1, -1, -1)], dim=1)
        s, t = self.layers(maps).chunk(2, dim=1)  # [B, C, H, W] each
        return torch.cat([s.flatten(1), t.flatten(1)], dim=1)


class _Coupling(nn.Module):
    """x_b = x_b * exp(s(x_a, c)) + t(x_a, c) on the unmasked half b; x_a passes through."""

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net

    def _scale_shift(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(x * self.mask, c).chunk(2, dim=1)  # [B, D] each
        free = 1 - self.mask
        return torch.tanh(s) * free, t * free

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(x, c)
        return x * torch.exp(s) + t, s.sum(dim=1)  # [B, D], log|det| [B]

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s, t = self._scale_shift(y, c)  # s and t read only the masked half, which y shares with x
        return (y - t) * torch.exp(-s)


class ConditionalLatentFlow(nn.Module):
    """z = F(u; c): ``blocks`` affine couplings between a standard-normal base u [B, D] and latents z [B, D].

    ``c`` is [B, K] in the condition's own units. ``to_base`` is F^{-1}, ``from_base`` is F. With ``shape``
    (C, H, W), C * H * W = D, the latents are maps in that layout (flattened C, H, W-major): the couplings mask
    random halves of the channels and their networks are convolutions (``_ConvNet``); without it, random halves of
    the dimensions and dense networks. With ``index`` (D positions in a longer latent of ``full_dim`` values) the
    flow models that part only: ``to_base``, ``from_base``, ``log_prob`` and ``estimate`` take the part [B, D],
    ``walk`` takes whole latents [B, full_dim] and leaves the rest of them as they are.
    """

    def __init__(self, dim: int, cond_dim: int = 1, blocks: int = 8, hidden: int = 256, seed: int = 0,
                 shape: tuple[int, int, int] | None = None, index=None, full_dim: int | None = None):
        super().__init__()
        if dim < 2:
            raise LatentFlowError(f"latent flow: expected latents of at least 2 dimensions, got {dim}")
        if shape is not None:
            shape = tuple(int(v) for v in shape)
            if len(shape) != 3 or math.prod(shape) != dim or shape[0] < 2:
                raise LatentFlowError(f"latent flow: shape {shape} is not (C >= 2, H, W) with C * H * W = {dim}")
        self.dim, self.cond_dim, self.blocks, self.hidden, self.seed = dim, cond_dim, blocks, hidden, seed
        self.shape = shape
        self.full_dim = None if index is None else int(full_dim if full_dim is not None else np.max(np.asarray(index)) + 1)
        if index is not None:
            index = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)
            if len(index) != dim or len(index.unique()) != dim or index.min() < 0 or index.max() >= self.full_dim:
                raise LatentFlowError(f"latent flow: index must hold {dim} distinct positions in 0..{self.full_dim - 1}")
            self.register_buffer("index", index)
        generator = torch.Generator().manual_seed(seed)
        units = dim if shape is None else shape[0]  # what a mask halves: dimensions, or channels
        couplings = []
        for _ in range(blocks):
            mask = torch.zeros(units)
            mask[torch.randperm(units, generator=generator)[: units // 2]] = 1.0
            if shape is None:
                couplings.append(_Coupling(mask, _DenseNet(dim, cond_dim, hidden)))
            else:
                mask = mask[:, None].expand(-1, shape[1] * shape[2]).flatten()  # [C] -> [C * H * W]
                couplings.append(_Coupling(mask, _ConvNet(shape, cond_dim, hidden)))
        self.couplings = nn.ModuleList(couplings)
        for name, size in (("z_mean", dim), ("z_std", dim), ("c_mean", cond_dim), ("c_std", cond_dim),
                           ("readout_bias", cond_dim), ("c_low", cond_dim), ("c_high", cond_dim)):
            self.register_buffer(name, torch.ones(size) if name.endswith("std") else torch.zeros(size))
        self.register_buffer("readout_weight", torch.zeros(dim, cond_dim))

    def config(self) -> dict:
        config = {"dim": self.dim, "cond_dim": self.cond_dim, "blocks": self.blocks, "hidden": self.hidden,
                  "seed": self.seed}
        if self.shape is not None:
            config["shape"] = list(self.shape)
        if self.full_dim is not None:
            config["full_dim"] = self.full_dim
        return config

    # -- the bijection, in standardised coordinates ------------------------------------------------------
    def _cond(self, c: torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(c, dtype=self.z_mean.dtype, device=self.z_mean.device)
        c = c.reshape(-1, self.cond_dim)
        return (c - self.c_mean) / self.c_std

    def _check(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise LatentFlowError(f"latent flow: expected latents [B, {self.dim}], got {tuple(z.shape)}")
        return z.to(self.z_mean.dtype)

    def to_base(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F^{-1}: latents [B, D] and conditions [B, K] -> (base u [B, D], log|det du/dz| [B])."""
        x = (self._check(z) - self.z_mean) / self.z_std
        cond = self._cond(c)
        logdet = -torch.log(self.z_std).sum().expand(len(x))
        for coupling in reversed(self.couplings):
            x, ld = coupling(x, cond)
            logdet = logdet + ld
        return x, logdet

    def from_base(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """F: base u [B, D] and conditions [B, K] -> latents [B, D] (the exact inverse of ``to_base``)."""
        x = self._check(u)
        cond = self._cond(c)
        for coupling in self.couplings:
            x = coupling.inverse(x, cond)
        return x * self.z_std + self.z_mean

    def log_prob(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p(z | c) [B] in nats."""
        u, logdet = self.to_base(z, c)
        return -0.5 * (u ** 2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet

    # -- editing -----------------------------------------------------------------------------------------
    def estimate(self, z: torch.Tensor) -> torch.Tensor:
        """The condition read out of the latents by the least-squares fit: [B, D] -> [B, K]."""
        return self._check(z) @ self.readout_weight + self.readout_bias

    @torch.no_grad()
    def transport(self, z: torch.Tensor, c_from: torch.Tensor, c_to: torch.Tensor) -> torch.Tensor:
        """F(F^{-1}(z; c_from); c_to): the latent of the same base point under another condition."""
        return self.from_base(self.to_base(z, c_from)[0], c_to)

    @torch.no_grad()
    def walk(self, z, strengths, column: int = 0):
        """[B, D] latents, [S] strengths -> [B, S, D]: condition ``column`` moved by a * its training std.

        The target is clipped to the training range of the condition (its 0.5% and 99.5% quantiles). Strength 0
        returns z itself. Numpy in, numpy out; torch in, torch out.
        """
        is_numpy = isinstance(z, np.ndarray)
        zt = torch.as_tensor(np.asarray(z) if is_numpy else z)
        whole = None
        if self.full_dim is not None:  # edit the flow's part of whole latents, keep the rest
            if zt.ndim != 2 or zt.shape[1] != self.full_dim:
                raise LatentFlowError(f"latent flow: expected latents [B, {self.full_dim}], got {tuple(zt.shape)}")
            whole, zt = zt, zt[:, self.index]
        zt = self._check(zt)
        a = torch.as_tensor(np.asarray(strengths, dtype=np.float64).reshape(-1), dtype=zt.dtype)  # [S]
        c0 = self.estimate(zt)  # [B, K]
        u = self.to_base(zt, c0)[0]  # [B, D]
        # targets stay inside the conditions seen in training (or the face's own, if outside): the flow knows
        # nothing of poses beyond the data, so the walk saturates there instead of decoding noise
        low = torch.minimum(self.c_low[column], c0[:, column])
        high = torch.maximum(self.c_high[column], c0[:, column])
        out = []
        for strength in a:
            c = c0.clone()
            c[:, column] = torch.minimum(torch.maximum(c[:, column] + strength * self.c_std[column], low), high)
            out.append(zt if strength == 0 else self.from_base(u, c))
        result = torch.stack(out, dim=1)  # [B, S, D]
        if whole is not None:
            edited = whole[:, None].repeat(1, len(a), 1).to(result.dtype)  # [B, S, full_dim]
            edited[:, :, self.index] = result
            result = edited
        return result.numpy() if is_numpy else result.to(z.dtype)

    # -- saving: flat float64 arrays, so the direction's .npz can hold them ----------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() if k == "index" else v.detach().cpu().double().numpy()
                for k, v in self.state_dict().items()}

    @classmethod
    def from_arrays(cls, config: dict, arrays: dict, where: str = "latent flow") -> ConditionalLatentFlow:
        try:
            flow = cls(int(config["dim"]), int(config["cond_dim"]), int(config["blocks"]), int(config["hidden"]),
                       int(config["seed"]), config.get("shape"), arrays.get("index"), config.get("full_dim")).double()
            flow.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise LatentFlowError(f"{where}: cannot rebuild the latent flow ({str(exc).splitlines()[0]})") from None
        return flow.eval().requires_grad_(False)


def fit_latent_flow(latents, conditions, blocks: int = 8, hidden: int = 256, epochs: int = 60,
                    batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-5, val_fraction: float = 0.1,
                    patience: int = 8, seed: int = 0, progress: bool = False,
                    shape: tuple[int, int, int] | None = None, index=None, pairs=None,
                    pair_weight: float = 0.0) -> tuple[ConditionalLatentFlow, dict]:
    """Fit p(z | c) by maximum likelihood; keep the weights of the best validation epoch (early stopping).

    latents [N, D], conditions [N] or [N, K]; ``shape`` (C, H, W) fits convolutional couplings on latents that are
    maps (see ConditionalLatentFlow); ``index`` fits the flow on those positions of the latents only (``walk``
    then edits that part of whole latents). Returns (the flow in float64 and eval mode, metrics: train and
    validation negative log-likelihood in nats per dimension, the read-out's R^2 per condition, epochs, seconds).

    ``pairs`` (z_a [P, D], c_a [P] or [P, K], z_b [P, D], c_b, in the units of ``latents`` and ``conditions``):
    latents of one face under two conditions (one person's photos at two yaws). Likelihood alone does not say
    which latent under c_b is the same face as z_a; with ``pair_weight`` > 0 every step also minimises
    ``pair_weight`` times the mean squared error, per standardised latent dimension, between the transport
    F(F^{-1}(z_a; c_a); c_b) and z_b, on a batch of pairs drawn from a stream of its own (the likelihood's
    batches stay those of a fit without pairs). A tenth (``val_fraction``) of the pairs is held out, and the early
    stopping watches the validation objective: likelihood plus ``pair_weight`` times their error. Given pairs, the
    metrics add ``pair_mse``: that error over all of them, for the returned weights (with a weight, also the
    train and validation pairs' errors at the best epoch). Without pairs, or with ``pair_weight`` 0, the fit is the
    maximum-likelihood one, bit for bit.
    """
    from tqdm import tqdm

    z = torch.as_tensor(np.asarray(latents), dtype=torch.float32)
    c = torch.as_tensor(np.asarray(conditions), dtype=torch.float32)
    c = c.reshape(len(c), -1)
    if z.ndim != 2 or len(c) != len(z):
        raise LatentFlowError(f"latent flow: expected latents [N, D] and one condition row per latent, got "
                              f"{tuple(z.shape)} and {tuple(c.shape)}")
    if len(z) < 20 or not (torch.isfinite(z).all() and torch.isfinite(c).all()):
        raise LatentFlowError(f"latent flow: need at least 20 finite latents to fit, got {len(z)}")
    dim = z.shape[1] if index is None else len(np.asarray(index).reshape(-1))
    torch.manual_seed(seed)
    flow = ConditionalLatentFlow(dim, c.shape[1], blocks, hidden, seed, shape, index, z.shape[1])  # checks index
    pair_data = None if pairs is None else _pair_tensors(pairs, z.shape[1], c.shape[1])
    if not math.isfinite(pair_weight) or pair_weight < 0 or (pair_weight > 0 and pairs is None):
        raise LatentFlowError(f"latent flow: pair_weight {pair_weight} needs pairs and must be finite and >= 0")
    if index is not None:
        z = z[:, flow.index]
        if pair_data is not None:
            pair_data = (pair_data[0][:, flow.index], pair_data[1], pair_data[2][:, flow.index], pair_data[3])
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(z), generator=generator)
    n_val = max(1, int(round(val_fraction * len(z))))
    val, train = order[:n_val], order[n_val:]

    # standardisation and the least-squares read-out, from the training part
    zt, ct = z[train].double(), c[train].double()
    flow.z_mean.copy_(zt.mean(0).float())
    flow.z_std.copy_(zt.std(0).clamp_min(1e-6).float())
    flow.c_mean.copy_(ct.mean(0).float())
    flow.c_std.copy_(ct.std(0).clamp_min(1e-6).float())
    flow.c_low.copy_(torch.quantile(ct, RANGE_QUANTILE, dim=0).float())
    flow.c_high.copy_(torch.quantile(ct, 1 - RANGE_QUANTILE, dim=0).float())
    design = torch.cat([zt, torch.ones(len(zt), 1, dtype=zt.dtype)], 1)  # [N, D + 1]
    ridge = 1e-6 * torch.eye(design.shape[1], dtype=zt.dtype) * len(zt)
    coef = torch.linalg.solve(design.T @ design + ridge, design.T @ ct)  # [D + 1, K]
    flow.readout_weight.copy_(coef[:-1].float())
    flow.readout_bias.copy_(coef[-1].float())
    zv, cv = z[val].double(), c[val].double()
    residual = cv - torch.cat([zv, torch.ones(len(zv), 1, dtype=zv.dtype)], 1) @ coef
    r2 = 1 - residual.pow(2).mean(0) / cv.var(0, unbiased=False).clamp_min(1e-12)

    opt = torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay)
    dim = z.shape[1]

    def nll(idx: torch.Tensor) -> torch.Tensor:  # nats per dimension, without the constant
        u, logdet = flow.to_base(z[idx], c[idx])
        return (0.5 * u.pow(2).sum(1) - logdet).mean() / dim

    def pair_error(idx: torch.Tensor) -> torch.Tensor:  # squared transport error per standardised dimension
        za, ca, zb, cb = (t[idx] for t in pair_data)
        moved = flow.from_base(flow.to_base(za, ca)[0], cb)
        return ((moved - zb) / flow.z_std).pow(2).mean()

    def mean_pair_error(idx: torch.Tensor) -> float:  # the same over many pairs, in chunks, without gradients
        with torch.no_grad():
            return sum(pair_error(part).item() * len(part) for part in idx.split(4 * batch_size)) / len(idx)

    train_pairs = pair_data is not None and pair_weight > 0
    if train_pairs:  # a validation part of the pairs, as of the latents, for the early stopping
        pair_generator = torch.Generator().manual_seed(seed + 1)  # its own stream: the likelihood's is untouched
        pair_rows = torch.randperm(len(pair_data[0]), generator=pair_generator)
        n_pair_val = max(1, int(round(val_fraction * len(pair_rows)))) if len(pair_rows) >= 10 else 0
        pair_val, pair_train = (pair_rows[:n_pair_val], pair_rows[n_pair_val:]) if n_pair_val else (pair_rows,) * 2
        pair_batch = min(batch_size, len(pair_train))
        steps = -(-len(train) // batch_size)
        pair_history = []

    best, best_state, stale, history, started = math.inf, None, 0, [], time.perf_counter()
    flushed = torch.set_flush_denormal(True)  # tiny coupling weights otherwise slow the CPU epochs down ~5x
    bar = tqdm(range(epochs), desc="latent flow", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        flow.train()
        perm = train[torch.randperm(len(train), generator=generator)]
        if train_pairs:  # enough shuffled passes over the pairs for a batch of them at every step
            pair_order = torch.cat([pair_train[torch.randperm(len(pair_train), generator=pair_generator)]
                                    for _ in range(-(-steps * pair_batch // len(pair_train)))])
            pair_total = 0.0
        total = 0.0
        for step, i in enumerate(range(0, len(perm), batch_size)):
            loss = nll(perm[i:i + batch_size])
            objective = loss
            if train_pairs:
                pair_loss = pair_error(pair_order[step * pair_batch:(step + 1) * pair_batch])
                objective = loss + pair_weight * pair_loss
                pair_total += pair_loss.item()
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            total += loss.item() * len(perm[i:i + batch_size])
        flow.eval()
        with torch.no_grad():
            val_nll = nll(val).item()
        criterion = val_nll  # what the early stopping watches: the validation value of the objective
        if train_pairs:
            pair_history.append((pair_total / steps, mean_pair_error(pair_val)))
            criterion = val_nll + pair_weight * pair_history[-1][1]
        history.append((total / len(perm), val_nll, criterion))
        bar.set_postfix(val=f"{criterion:.3f}")
        if criterion < best - 1e-4:
            best, stale = criterion, 0
            best_state = {k: v.clone() for k, v in flow.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    bar.close()
    if flushed:
        torch.set_flush_denormal(False)
    if best_state is not None:
        flow.load_state_dict(best_state)
    best_epoch = int(np.argmin([v for _, _, v in history])) + 1
    metrics = {"train_nll_per_dim": round(history[best_epoch - 1][0], 5),
               "val_nll_per_dim": round(history[best_epoch - 1][1], 5),
               "best_epoch": best_epoch, "epochs_run": len(history), "n_train": int(len(train)),
               "n_val": int(n_val), "readout_r2": [round(float(v), 4) for v in r2],
               "fit_seconds": round(time.perf_counter() - started, 1),
               "nll_note": "nats per latent dimension, standardised latents, without the 0.5 log(2 pi) constant"}
    if pair_data is not None:
        metrics.update(pair_mse=round(mean_pair_error(torch.arange(len(pair_data[0]))), 6),
                       pair_weight=float(pair_weight), n_pairs=int(len(pair_data[0])),
                       pair_note="mean squared error of F(F^-1(z_a; c_a); c_b) against z_b per standardised latent "
                                 "dimension, over all pairs, for the returned weights")
        if train_pairs:
            metrics.update(train_pair_mse=round(pair_history[best_epoch - 1][0], 6),
                           val_pair_mse=round(pair_history[best_epoch - 1][1], 6), n_val_pairs=n_pair_val)
    return flow.double().eval().requires_grad_(False), metrics


def _pair_tensors(pairs, full_dim: int, cond_dim: int) -> tuple[torch.Tensor, ...]:
    """``fit_latent_flow``'s pairs (z_a [P, D], c_a [P] or [P, K], z_b, c_b) -> float32 tensors, conditions
    [P, K]; one-line errors for a wrong shape or a non-finite value."""
    try:
        z_a, c_a, z_b, c_b = pairs
    except (TypeError, ValueError):
        raise LatentFlowError("latent flow: pairs must be a tuple (z_a, c_a, z_b, c_b)") from None
    z_a, z_b, c_a, c_b = (torch.as_tensor(np.asarray(v), dtype=torch.float32) for v in (z_a, z_b, c_a, c_b))
    count = len(z_a) if z_a.ndim else 0
    c_a, c_b = (v.reshape(len(v), -1) if v.ndim and v.numel() else v for v in (c_a, c_b))
    if (count == 0 or z_a.shape != (count, full_dim) or z_b.shape != (count, full_dim)
            or c_a.shape != (count, cond_dim) or c_b.shape != (count, cond_dim)):
        raise LatentFlowError(f"latent flow: expected pairs of latents [P, {full_dim}] and conditions [P, {cond_dim}]"
                              f", got {tuple(z_a.shape)}, {tuple(c_a.shape)}, {tuple(z_b.shape)}, {tuple(c_b.shape)}")
    if not all(torch.isfinite(v).all() for v in (z_a, c_a, z_b, c_b)):
        raise LatentFlowError("latent flow: the pairs hold non-finite values")
    return z_a, c_a, z_b, c_b

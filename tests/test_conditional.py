"""Tests for the ConditionalVAE and for feeding labels: batching, fit, evaluation, pictures.

The slow test at the end starts two processes as ``torchrun`` would (Gloo on the CPU); each runs
this file as a script (``python tests/test_conditional.py ddp OUT PORT2``).
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import autoenc
from autoenc import ConditionalVAE, Decoder, Encoder, Gaussian, GaussianVAE, LossOutput
from autoenc.data import make_batches
from autoenc.evaluation import evaluate, latent_diagnostics, log_likelihood
from autoenc.models import iwae_terms
from autoenc.pictures import class_grid
from autoenc.training import fit

D, LATENT, K, VEC = 6, 2, 3, 4  # data width, latent size, classes, condition-vector width


def cvae(kind: str = "onehot", *, prior: str = "standard", seed: int = 0) -> ConditionalVAE:
    """A tiny Bernoulli CVAE with one of the three kinds of condition."""
    torch.manual_seed(seed)
    width = {"onehot": K, "embedding": 5, "vector": VEC}[kind]
    options = {
        "onehot": {"num_classes": K},
        "embedding": {"num_classes": K, "embedding_dim": 5},
        "vector": {"condition_dim": VEC},
    }[kind]
    return ConditionalVAE(
        Encoder(D + width, [8], 2 * LATENT),
        Decoder(LATENT + width, [8], D),
        LATENT,
        prior=prior,
        **options,
    )


def conditions(kind: str, n: int, seed: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "vector":
        return torch.randn(n, VEC, generator=g)
    return torch.randint(0, K, (n,), generator=g)


def pairs(n: int = 12, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Binary ``x`` with distinct rows (so a row names its example) and class labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, D), generator=g).float()
    x[:, 0] = torch.arange(n) / n  # distinct rows; Bernoulli targets need only lie in [0, 1]
    return x, torch.randint(0, K, (n,), generator=g)


class Pairs(Dataset):
    """A map-style dataset of ``(x, y)`` items."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


class Images(Dataset):
    """A map-style dataset of bare examples, without labels."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


# ---------------------------------------------------------------------------------------------
# the condition reaches both networks


@pytest.mark.parametrize("kind", ["onehot", "embedding", "vector"])
def test_the_condition_changes_the_decoder_output_and_the_posterior(kind):
    model = cvae(kind).eval()
    x, z = pairs(4)[0], torch.randn(4, LATENT)
    c1, c2 = conditions(kind, 4, seed=2), conditions(kind, 4, seed=3)
    if kind != "vector":
        c2 = (c1 + 1) % K  # every example changes class
    assert not torch.allclose(model.decode(z, c1), model.decode(z, c2))
    assert not torch.allclose(model.encode(x, c1).mu, model.encode(x, c2).mu)
    # the same condition gives the same result: the difference is the condition's
    assert torch.equal(model.decode(z, c1), model.decode(z, c1))


def test_the_one_hot_condition_is_concatenated_to_x_and_to_z():
    model = cvae().eval()
    x, c, z = pairs(4)[0], torch.tensor([0, 2, 1, 2]), torch.randn(4, LATENT)
    onehot = F.one_hot(c, K).float()
    expected = model.encoder(torch.cat([x, onehot], 1)).chunk(2, 1)[0]
    assert torch.equal(model.encode(x, c).mu, expected)
    assert torch.equal(model.decode_params(z, c), model.decoder(torch.cat([z, onehot], 1)))


def test_image_condition_enters_a_three_dim_encoder_as_channels():
    torch.manual_seed(0)
    model = ConditionalVAE(
        Encoder((1 + K, 4, 4), [8], 2 * LATENT),
        Decoder(LATENT + K, [8], (1, 4, 4)),
        LATENT,
        num_classes=K,
    )
    assert model.encoder_input == "channels"
    x, c = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    planes = F.one_hot(c, K).float()[:, :, None, None].expand(2, K, 4, 4)
    expected = model.encoder(torch.cat([x, planes], 1)).chunk(2, 1)[0]
    assert torch.equal(model.encode(x, c).mu, expected)
    assert model.loss(x, c).loss.isfinite()
    with pytest.raises(ValueError, match=r"in_shape must be \(4, 4, 4\)"):
        ConditionalVAE(
            Encoder((1 + K + 1, 4, 4), [8], 4), Decoder(2 + K, [8], (1, 4, 4)), 2, num_classes=K
        )


# ---------------------------------------------------------------------------------------------
# bad conditions and networks get clear errors


def test_class_indices_out_of_range_or_of_the_wrong_kind_are_refused():
    model, x = cvae(), pairs(3)[0]
    with pytest.raises(ValueError, match=r"from 0 to 3, outside \[0, num_classes=3\)"):
        model.loss(x, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="from -1 to"):
        model.sample(2, c=[-1, 0])
    with pytest.raises(TypeError, match="integer tensor"):
        model.loss(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model.loss(x, torch.tensor([0, 1]))  # one label short
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.encode(x, [0, 1, 2])


def test_condition_vectors_of_the_wrong_width_or_values_are_refused():
    model, x = cvae("vector"), pairs(3)[0]
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*got \(3, 5\)"):
        model.loss(x, torch.randn(3, VEC + 1))
    with pytest.raises(TypeError, match="float condition vectors"):
        model.loss(x, torch.zeros(3, VEC, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.loss(x, torch.full((3, VEC), float("nan")))


@pytest.mark.parametrize(
    ("encoder", "decoder", "match"),
    [
        (Encoder(D, [8], 4), Decoder(2 + K, [8], D), r"6 \+ 3 = 9 features.*in_features is 6"),
        (Encoder(D + K, [8], 4), Decoder(2, [8], D), r"2 \+ 3 = 5 features.*in_features is 2"),
        (Encoder(D + K, [8], 6), Decoder(2 + K, [8], D), r"2 \* latent_dim = 4.*is 6"),
    ],
)
def test_networks_of_the_wrong_width_are_refused_naming_both_widths(encoder, decoder, match):
    with pytest.raises(ValueError, match=match):
        ConditionalVAE(encoder, decoder, LATENT, num_classes=K)


def test_inputs_of_the_wrong_width_are_refused_naming_both_widths():
    model = cvae()
    with pytest.raises(ValueError, match="in_features=9 = prod\\(x shape\\) \\+ 3.*has 8"):
        model.loss(torch.rand(2, D - 1), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"num_classes": K, "condition_dim": 2}, "exactly one"),
        ({"condition_dim": K, "embedding_dim": 2}, "needs num_classes"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"num_classes": K, "prior": "flow"}, "prior"),
        ({"num_classes": K, "encoder_input": "sideways"}, "encoder_input"),
    ],
)
def test_the_condition_kind_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConditionalVAE(nn.Linear(D + K, 4), nn.Linear(2 + K, D), LATENT, **kwargs)


# ---------------------------------------------------------------------------------------------
# the loss, the learned prior and sampling


def test_learned_prior_kl_is_torch_distributions_kl():
    model = cvae("embedding", prior="learned")
    with torch.no_grad():  # move the prior away from N(0, I)
        model.prior_net.bias.copy_(torch.tensor([0.5, -1.0, 0.7, -0.4]))
    x, c = pairs(5)
    q = model.encode(x, c)
    mu_p, logvar_p = model.prior_params(c)
    assert not torch.allclose(mu_p, torch.zeros_like(mu_p))
    p = torch.distributions.Normal(mu_p, torch.exp(0.5 * logvar_p))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.std), p)
    torch.testing.assert_close(model.kl_elementwise(q, c), expected)
    eps = torch.randn(5, LATENT)
    out = model.loss(x, c, eps=eps)
    torch.testing.assert_close(out.kl, expected.sum(1).mean())
    recon = F.binary_cross_entropy_with_logits(
        model.decode_params(q.mu + q.std * eps, c), x, reduction="none"
    )
    torch.testing.assert_close(out.recon, recon.sum(1).mean())
    torch.testing.assert_close(out.loss, out.recon + out.kl)


def test_sample_takes_an_int_a_list_a_tensor_or_vectors_and_uses_the_prior():
    model = cvae(prior="learned")
    with torch.no_grad():
        model.prior_net.bias.copy_(torch.tensor([2.0, -2.0, 0.3, 0.1]))
    draw = model.sample(3, c=2, generator=torch.Generator().manual_seed(4))
    eps = torch.randn(3, LATENT, generator=torch.Generator().manual_seed(4))
    c = torch.full((3,), 2)
    mu_p, logvar_p = model.prior_params(c)
    torch.testing.assert_close(draw, model.decode(mu_p + torch.exp(0.5 * logvar_p) * eps, c))
    same = model.sample(3, c=[2, 2, 2], generator=torch.Generator().manual_seed(4))
    assert torch.equal(draw, same)
    assert model.sample(2, c=torch.tensor([0, 1])).shape == (2, D)
    vector = cvae("vector")
    assert vector.sample(5, c=torch.randn(VEC)).shape == (5, D)  # one vector for all
    assert vector.sample(2, c=torch.randn(2, VEC)).shape == (2, D)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model.sample(4, c=[0, 1])  # not one class per sample


def test_reconstruct_decodes_the_posterior_mean_in_eval_mode():
    model = cvae().train()
    x, c = pairs(4)
    q = model.eval().encode(x, c)
    expected = model.decode(q.mu, c)
    model.train()
    assert torch.equal(model.reconstruct(x, c), expected)
    assert model.training
    assert torch.equal(model.embed(x, c), q.mu)


def test_save_and_load_give_the_same_model(tmp_path):
    x, c = pairs(5)
    for kind in ("onehot", "embedding", "vector"):
        model = cvae(kind, prior="learned")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))  # leave the initialization
        cond = conditions(kind, 5) if kind == "vector" else c
        loaded = autoenc.load(autoenc.save(model, tmp_path / f"{kind}.pt"))
        assert type(loaded) is ConditionalVAE and loaded.config == model.config
        eps = torch.randn(5, LATENT)
        assert torch.equal(loaded.loss(x, cond, eps=eps).loss, model.loss(x, cond, eps=eps).loss)
        draws = [
            m.sample(5, c=cond, generator=torch.Generator().manual_seed(1)) for m in (loaded, model)
        ]
        assert torch.equal(*draws)


# ---------------------------------------------------------------------------------------------
# feeding labels: batching, fit, evaluate


def test_batches_with_labels_are_aligned_pairs_and_shard_like_x():
    x, y = pairs(13)
    for data in ((x, y), TensorDataset(x, y), Pairs(x, y), Subset(TensorDataset(x, y), range(13))):
        for world_size in (1, 2):
            seen = []
            for rank in range(world_size):
                kw = dict(batch_size=4, shuffle=True, rank=rank, world_size=world_size)
                batches = make_batches(
                    data, generator=torch.Generator().manual_seed(3), labels=True, **kw
                )
                plain = make_batches(x, generator=torch.Generator().manual_seed(3), **kw)
                for (bx, by), px in zip(batches, plain, strict=True):
                    assert torch.equal(bx, px)  # x exactly as without labels
                    index = (bx[:, 0] * 13).round().long()
                    assert torch.equal(by, y[index])  # each label with its example
                    seen += index.tolist()
            assert sorted(seen) == list(range(13))  # every example once, over the ranks


def test_batches_with_labels_from_a_dataloader_and_transform_on_x_only():
    x, y = pairs(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    for bx, by in make_batches(loader, batch_size=1, labels=True, transform=lambda t: 1 - t):
        index = ((1 - bx[:, 0]) * 10).round().long()
        assert torch.equal(by, y[index])
    assert all(isinstance(b, Tensor) for b in make_batches((x, y), batch_size=4))  # no labels


class Recorder:
    """Wraps ``model.loss`` and records the ``(x, c)`` pairs it is given in training."""

    def __init__(self, model: nn.Module) -> None:
        self.loss, self.seen = model.loss, []
        model.loss = self

    def __call__(self, x: Tensor, c: Tensor, **kwargs) -> LossOutput:
        if torch.is_grad_enabled():
            self.seen.append((x.detach().clone(), c.clone()))
        return self.loss(x, c, **kwargs)


@pytest.mark.parametrize("kind", ["pair", "tensordataset", "dataset", "dataloader"])
def test_fit_gives_every_example_its_own_label(kind):
    x, y = pairs(12)
    data = {
        "pair": (x, y),
        "tensordataset": TensorDataset(x, y),
        "dataset": Pairs(x, y),
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True),
    }[kind]
    model = cvae()
    recorder = Recorder(model)
    result = fit(model, data, epochs=2, batch_size=5, lr=1e-2, seed=0, verbose=False)
    assert result.steps == 2 * 3 and len(recorder.seen) == 6
    for bx, by in recorder.seen:
        assert torch.equal(by, y[(bx[:, 0] * 12).round().long()])
    rows = torch.cat([bx[:, 0] for bx, _ in recorder.seen[:3]])
    assert sorted((rows * 12).round().long().tolist()) == list(range(12))


def test_fit_on_every_kind_of_data_trains_the_same_model():
    x, y = pairs(12)

    def trained(data, **kwargs) -> dict:
        model = cvae()
        fit(model, data, epochs=2, batch_size=4, lr=1e-2, seed=0, verbose=False, **kwargs)
        return model.state_dict()

    ref = trained((x, y))
    for data in (TensorDataset(x, y), Pairs(x, y)):
        for key, value in trained(data).items():
            assert torch.equal(value, ref[key]), key
    in_order = trained((x, y), shuffle=False)
    # a DataLoader draws a seed from its generator per epoch: its own, so the noise stays aligned
    loader = trained(DataLoader(TensorDataset(x, y), batch_size=4, generator=torch.Generator()))
    for key, value in loader.items():
        assert torch.equal(value, in_order[key]), key
    wrong = trained((x, (y + 1) % K))  # labels matter
    assert not all(torch.equal(v, ref[k]) for k, v in wrong.items())


@pytest.mark.parametrize("kind", ["pair", "tensordataset", "dataset", "dataloader"])
def test_evaluate_is_the_hand_loop_over_the_same_batches(kind):
    x, y = pairs(10)
    data = {
        "pair": (x, y),
        "tensordataset": TensorDataset(x, y),
        "dataset": Pairs(x, y),
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=4, generator=torch.Generator()),
    }[kind]
    model = cvae(prior="learned")
    got = evaluate(model, data, batch_size=4, seed=7)
    total = 0.0
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(7)
        model.eval()
        for start in range(0, 10, 4):
            xb, yb = x[start : start + 4], y[start : start + 4]
            total += model.loss(xb, yb).loss.item() * len(xb)
    assert got["loss"] == pytest.approx(total / 10, rel=1e-6)


def test_unconditional_models_still_ignore_labels():
    x, y = pairs(12)

    def trained(data) -> GaussianVAE:
        torch.manual_seed(0)
        vae = GaussianVAE(Encoder(D, [8], 4), Decoder(2, [8], D), latent_dim=2)
        fit(vae, data, epochs=2, batch_size=4, seed=0, verbose=False)
        return vae

    plain, labelled = trained(x), trained((x, y))
    for key, value in plain.state_dict().items():
        assert torch.equal(value, labelled.state_dict()[key])
    assert evaluate(plain, (x, y), seed=1) == evaluate(plain, x, seed=1)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pairs()[0], "got a tensor of examples alone"),
        (TensorDataset(pairs()[0]), "tensor of examples alone"),
        (Images(pairs()[0]), "dataset items that are \\(x, y\\) pairs, got Tensor"),
        (DataLoader(TensorDataset(pairs()[0]), batch_size=4), "got a 1-tuple"),
    ],
)
def test_a_conditional_model_without_labels_fails_at_the_start_of_fit(data, match):
    model = cvae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit(model, data, epochs=1, verbose=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fit_checks_the_whole_first_batch_of_labels():
    x, y = pairs(12)
    y[5] = K  # out of range, beyond the two examples the dry run uses
    with pytest.raises(ValueError, match="outside"):
        fit(cvae(), (x, y), epochs=1, batch_size=12, shuffle=False, verbose=False)


# ---------------------------------------------------------------------------------------------
# log p(x | c) by importance sampling


class Affine(nn.Module):
    """``x @ weight.T + bias`` in float64 with given values."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight.double()), nn.Parameter(bias.double())

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias


def test_log_likelihood_of_a_linear_gaussian_cvae_matches_the_closed_form():
    # z | c ~ N(A e_c, diag(v)), x = W z + B e_c + b + s * noise, so
    # p(x | c) = N(b + B e_c + W A e_c, W diag(v) W^T + s^2 I).
    dt = torch.float64
    w = torch.tensor([[1.0, 0.5], [-0.7, 1.2], [0.3, -0.9]], dtype=dt)
    big_b = torch.tensor([[1.0, -1.0], [0.5, 0.0], [-0.5, 2.0]], dtype=dt)  # (3, K=2)
    a = torch.tensor([[0.8, -0.6], [0.0, 1.1]], dtype=dt)  # prior means, (latent, K)
    logvar_p = torch.tensor([-0.4, 0.3], dtype=dt)
    bias, s = torch.tensor([0.5, -1.0, 0.2], dtype=dt), 0.5
    cov_p = torch.diag(logvar_p.exp())
    post_cov = torch.linalg.inv(torch.linalg.inv(cov_p) + w.T @ w / s**2)
    gain = post_cov @ w.T / s**2  # posterior mean = gain (x - b - B e_c) + P cov_p^-1 A e_c
    class_part = post_cov @ torch.linalg.inv(cov_p) @ a - gain @ big_b  # (latent, K)
    # An imperfect encoder on [x, e_c]: a shrunk mean and an over-dispersed variance.
    enc_w = torch.cat(
        [
            torch.cat([0.8 * gain, 0.8 * class_part], 1),
            torch.zeros(2, 3 + 2, dtype=dt),
        ]
    )
    enc_b = torch.cat([-0.8 * gain @ bias, post_cov.diagonal().log() + 0.7])
    model = ConditionalVAE(
        Affine(enc_w, enc_b),
        Affine(torch.cat([w, big_b], 1), bias),
        latent_dim=2,
        num_classes=2,
        prior="learned",
        likelihood=Gaussian(scale=s),
    ).double()
    with torch.no_grad():
        model.prior_net.weight.copy_(torch.cat([a, torch.zeros(2, 2, dtype=dt)]))
        model.prior_net.bias.copy_(torch.cat([torch.zeros(2, dtype=dt), logvar_p]))
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 2, (8,), generator=g)
    onehot = F.one_hot(y, 2).to(dt)
    mean = bias + onehot @ (big_b + w @ a).T  # (8, 3)
    cov = w @ cov_p @ w.T + s**2 * torch.eye(3, dtype=dt)
    x = mean + torch.randn(8, 3, generator=g, dtype=dt) @ torch.linalg.cholesky(cov).T
    exact = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    est = log_likelihood(model, (x, y), k=5000).log_px
    assert (est - exact).abs().max() < 0.05
    assert (log_likelihood(model, (x, y), k=1).log_px - exact).abs().max() > 0.1
    # iwae_terms computes the same bound, and the condition is required
    assert (-iwae_terms(model, x, 2000, c=y).loss - exact).abs().max() < 0.1
    with pytest.raises(ValueError, match="needs its condition"):
        iwae_terms(model, x, 3)
    with pytest.raises(ValueError, match="labels"):
        log_likelihood(model, x, k=2)


def test_latent_diagnostics_and_class_grid_take_a_conditional_model():
    model = cvae(prior="learned")
    x, y = pairs(20)
    diag = latent_diagnostics(model, (x, y), min_active=0)
    q = model.encode(x, y)
    torch.testing.assert_close(diag.kl_per_dim, model.kl_elementwise(q, y).mean(0).double())
    grid = class_grid(model, classes=[2, 0], n_per_class=3, seed=5, image_shape=(1, 2, 3))
    assert grid.shape == (3, 2 * (2 + 2) + 2, 3 * (3 + 2) + 2)
    assert torch.equal(grid, class_grid(model, [2, 0], 3, seed=5, image_shape=(1, 2, 3)))
    assert not torch.equal(grid, class_grid(model, [0, 2], 3, seed=5, image_shape=(1, 2, 3)))
    with pytest.raises(ValueError, match="outside"):
        class_grid(model, classes=[K], image_shape=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# two processes (torchrun's environment, Gloo on the CPU)

N_TRAIN, BATCH, EPOCHS, LR = 21, 8, 3, 0.05


class CondAE(nn.Module):
    """A deterministic conditional autoencoder: ``x`` rebuilt from ``[x, one_hot(c)]``."""

    conditional = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D + K, 4), nn.Tanh(), nn.Linear(4, D))
        self.seen: list[tuple[Tensor, Tensor]] = []

    def loss(self, x: Tensor, c: Tensor) -> LossOutput:
        if self.training and torch.is_grad_enabled():  # the steps, not fit's dry run
            self.seen.append((x.detach().clone(), c.clone()))
        recon = (self.net(torch.cat([x, F.one_hot(c, K).float()], 1)) - x).pow(2).sum(1).mean()
        return LossOutput(loss=recon, recon=recon.detach())


def _ddp_worker(out: Path, port2: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    x, y = pairs(N_TRAIN)
    model = CondAE()
    result = fit(model, (x, y), epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0, verbose=False)
    report = {"weights": model.state_dict(), "history": result.history, "seen": model.seen}
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port2}",
        rank=rank,
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(seconds=60),
    )
    vae = cvae(prior="learned")
    fit(vae, Pairs(x, y), epochs=2, batch_size=BATCH, lr=LR, seed=1, verbose=False)
    report["cvae"] = vae.state_dict()
    dist.destroy_process_group()
    torch.save(report, out / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path: Path) -> list[tuple[int, str, str]]:
    port, port2 = _free_port(), _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, __file__, "ddp", str(tmp_path), str(port2)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        return [(p.wait(timeout=240), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_two_ranks_train_a_conditional_model_like_one_process(tmp_path):
    # A port found free can be taken (by gloo's own connections) before a worker listens on
    # it: try again with new ports when that is what failed.
    for _ in range(3):
        runs = _run_two_ranks(tmp_path)
        if not any("EADDRINUSE" in stderr for _, _, stderr in runs):
            break
    for code, stdout, stderr in runs:
        assert code == 0, f"a worker failed:\n{stdout}\n{stderr}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    x, y = pairs(N_TRAIN)
    single = CondAE()
    one = fit(single, (x, y), epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0, verbose=False)
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key])
        torch.testing.assert_close(ranks[0]["weights"][key], value, rtol=0, atol=1e-6)
    assert ranks[0]["history"]["train/loss"] == pytest.approx(one.history["train/loss"], rel=1e-6)
    # y is sharded exactly like x: every rank's labels belong to its examples, and the ranks'
    # first steps together are the single process's first global batch
    for r in ranks:
        for bx, by in r["seen"]:
            assert torch.equal(by, y[(bx[:, 0] * N_TRAIN).round().long()])
    both = torch.cat([ranks[0]["seen"][0][0], ranks[1]["seen"][0][0]])
    assert sorted(both[:, 0].tolist()) == sorted(single.seen[0][0][:, 0].tolist())
    for key, value in ranks[0]["cvae"].items():
        assert torch.equal(value, ranks[1]["cvae"][key]), key


@pytest.mark.slow
def test_the_example_trains_and_draws_the_class_grid(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    root = Path(os.environ.get("AUTOENC_DATA", repo.parent / "shared" / "data"))
    if not (root / "MNIST").is_dir():
        pytest.skip(f"no MNIST under {root}")
    cmd = [sys.executable, str(repo / "examples" / "mnist_cvae.py"), "--data-root", str(root)]
    cmd += ["--epochs", "1", "--max-batches", "2", "--iw-samples", "2", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "test/nll_nats_k2" in run.stdout
    assert (tmp_path / "class_grid.png").stat().st_size > 0
    loaded = autoenc.load(tmp_path / "model.pt")
    assert isinstance(loaded, ConditionalVAE) and loaded.num_classes == 10


if __name__ == "__main__" and sys.argv[1:2] == ["ddp"]:
    _ddp_worker(Path(sys.argv[2]), sys.argv[3])


def test_image_snapshots_draw_every_class_and_refuse_x_without_labels(tmp_path):
    """Prior samples of a class-conditional model cycle through the classes; reconstructing x
    would need its labels, so ImageSnapshots(x=...) is refused before training starts."""
    from autoenc import ImageSnapshots, fit
    from autoenc.pictures import prior_samples

    torch.manual_seed(0)
    model = ConditionalVAE(Encoder(6 + 3, [8], 4), Decoder(2 + 3, [8], (1, 2, 3)), 2, num_classes=3)
    samples = prior_samples(model, 6, seed=1)
    by_class = model.sample(6, c=torch.tensor([0, 1, 2, 0, 1, 2]),
                            generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(samples, by_class)
    x, y = torch.rand(8, 1, 2, 3).round(), torch.randint(0, 3, (8,))
    fit(model, (x, y), epochs=1, batch_size=4, verbose=False,
        callbacks=[ImageSnapshots(tmp_path, n_samples=6)])  # fmt: skip
    assert (tmp_path / "samples_epoch001.png").is_file()
    with pytest.raises(ValueError, match="without its labels"):
        fit(model, (x, y), epochs=1, batch_size=4, verbose=False,
            callbacks=[ImageSnapshots(tmp_path, x)])  # fmt: skip


def test_importance_weights_repeat_a_vector_condition_for_every_sample():
    """With float-vector conditions, each of the k draws of an example is decoded under that
    example's own vector: the bound equals one computed example by example."""
    from autoenc.models import iwae_terms

    torch.manual_seed(0)
    model = ConditionalVAE(Encoder(6 + 2, [8], 4), Decoder(2 + 2, [8], 6), 2, condition_dim=2)
    x, c = torch.rand(3, 6).round(), torch.randn(3, 2)
    eps = torch.randn(4, 3, 2)
    together = iwae_terms(model, x, 4, eps=eps, c=c).loss
    alone = torch.cat(
        [iwae_terms(model, x[i : i + 1], 4, eps=eps[:, i : i + 1], c=c[i : i + 1]).loss
         for i in range(3)]
    )  # fmt: skip
    torch.testing.assert_close(together, alone)

"""Tests for autoenc.networks.quantizer: lookup, straight-through gradient, losses, EMA codebook,
initialization, dead-code restarts, state and (slow) the all-reduce under torch.distributed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from autoenc.networks.quantizer import VectorQuantizer


def ready(vq: VectorQuantizer, codes: torch.Tensor, **buffers: torch.Tensor) -> VectorQuantizer:
    """Give ``vq`` the codebook ``codes`` (and other buffers) as a loaded model would have it."""
    state = vq.state_dict()
    state.update(codes=codes.clone(), initialized=torch.tensor(True), **buffers)
    if vq.ema and "embed_sum" not in buffers:
        state["embed_sum"] = codes.clone()
    vq.load_state_dict(state)
    return vq


def grid(flat: torch.Tensor) -> torch.Tensor:
    """Vectors ``(n, d)`` as one example's sequence ``(1, d, n)``."""
    return flat.T.unsqueeze(0)


def test_straight_through_gradient_reaches_the_input_unchanged():
    vq = VectorQuantizer(8, 3)
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = vq(z)
    out.z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_the_codebook_term_trains_the_used_codes_by_gradient():
    vq = ready(VectorQuantizer(4, 2, ema=False), torch.tensor([[0.0, 0], [1, 1], [5, 5], [9, 9]]))
    z = torch.randn(2, 2, 3)
    out = vq(z)
    out.loss.backward()
    idx, flat = out.indices.flatten(), z.permute(0, 2, 1).reshape(-1, 2)
    codes = vq.codes.detach()
    # d/de_i of (1/b) sum_{z -> i} |e_i - z|^2; the commitment term does not reach the codes
    expected = 2 / z.shape[0] * torch.zeros_like(codes).index_add_(0, idx, codes[idx] - flat)
    assert torch.allclose(vq.codes.grad, expected)


def test_nearest_code_is_the_argmin_of_cdist_chunked_or_not():
    z = torch.randn(3, 5, 6, 7)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)
    codes = torch.randn(32, 5)
    expected = torch.cdist(flat, codes).argmin(-1).view(3, 6, 7)
    for chunk_size in (7, 10_000):
        vq = ready(VectorQuantizer(32, 5, chunk_size=chunk_size), codes).eval()
        assert torch.equal(vq(z).indices, expected)


def test_lookup_stays_exact_under_bfloat16_autocast():
    z, codes = torch.randn(2, 8, 16, 16), torch.randn(64, 8)
    vq = ready(VectorQuantizer(64, 8), codes).eval()
    expected = torch.cdist(z.permute(0, 2, 3, 1), codes).argmin(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq(z).indices, expected)


@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 5), (2, 4, 3, 5), (1, 4, 2, 3, 2)])
def test_any_number_of_spatial_dimensions_and_lookup_gives_z_q(shape):
    vq = VectorQuantizer(16, 4, init="random")
    vq(torch.randn(shape))
    out = vq.eval()(torch.randn(shape))
    assert out.z_q.shape == shape and out.indices.shape == (shape[0], *shape[2:])
    assert torch.allclose(vq.lookup(out.indices), out.z_q, atol=1e-6)


def test_losses_are_summed_over_the_grid_and_averaged_over_the_batch():
    z = torch.randn(3, 2, 4, 4)
    for ema in (True, False):
        vq = VectorQuantizer(5, 2, beta=0.3, ema=ema).eval()
        out = vq(z)
        sq = (z - vq.lookup(out.indices)).pow(2).sum((1, 2, 3)).mean()
        assert torch.allclose(out.commitment, 0.3 * sq)
        assert torch.allclose(out.codebook, torch.tensor(0.0) if ema else sq)
        assert torch.allclose(out.loss, out.commitment + out.codebook)


def test_ema_update_equals_the_formulas_by_hand():
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    size, embed_sum = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([[0.2, 0.0], [1.0, 1.5], [2, 3]])
    vq = VectorQuantizer(3, 2, decay=0.9, eps=1e-5)
    ready(vq, codes, cluster_size=size, embed_sum=embed_sum)
    z = torch.tensor([[0.1, 0.2], [0.9, 1.2], [1.1, 0.8], [-0.1, 0.1]])
    out = vq(grid(z))
    assert out.indices.tolist() == [[0, 1, 1, 0]]  # looked up in the codebook before the update
    n_i = torch.tensor([2.0, 2.0, 0.0])
    sums = torch.tensor([[0.0, 0.3], [2.0, 2.0], [0.0, 0.0]])
    new_size = 0.9 * size + 0.1 * n_i
    new_sum = 0.9 * embed_sum + 0.1 * sums
    n = new_size.sum()
    smoothed = (new_size + 1e-5) / (n + 3 * 1e-5) * n
    assert torch.allclose(vq.cluster_size, new_size)
    assert torch.allclose(vq.embed_sum, new_sum)
    assert torch.allclose(vq.codes, new_sum / smoothed[:, None])


@pytest.mark.parametrize("ema", [True, False])
def test_a_dead_code_is_restarted_after_n_steps_and_a_used_one_is_not(ema):
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])
    vq = ready(VectorQuantizer(3, 2, ema=ema, restart_after=2), codes)
    z = torch.tensor([[0.1, -0.1], [0.9, 1.1], [-0.1, 0.1], [1.1, 0.9]])
    vq(grid(z))
    assert torch.allclose(vq.codes[2], codes[2]) and vq.unused_steps.tolist() == [0, 0, 1]
    used = vq.codes[:2].clone()
    vq(grid(z))
    assert vq.unused_steps.tolist() == [0, 0, 0]
    assert (vq.codes[2] - z).norm(dim=-1).min() < 1e-3  # now one of the batch's vectors
    if ema:
        assert torch.allclose(vq.cluster_size[2], torch.tensor(vq.decay))  # reset to 1, decayed
        assert not torch.equal(vq.codes[:2], used)  # the used codes still follow their vectors
    else:
        assert torch.equal(vq.codes[:2], used)


def test_without_restart_after_a_dead_code_stays():
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])
    vq = ready(VectorQuantizer(3, 2, ema=False), codes)
    for _ in range(5):
        vq(grid(torch.rand(6, 2)))
    assert torch.equal(vq.codes, codes) and vq.unused_steps[2] == 5


def test_kmeans_start_finds_the_clusters_of_the_first_batch_only():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    z = centers.repeat(20, 1) + 0.1 * torch.randn(60, 2)
    vq = VectorQuantizer(3, 2, ema=False, init="kmeans")
    vq(grid(z))
    dist_to_centers = torch.cdist(vq.codes.detach(), centers)
    assert dist_to_centers.min(0).values.max() < 0.2  # every center has a code on it
    start = vq.codes.detach().clone()
    vq(grid(z + 50))
    assert torch.equal(vq.codes, start) and bool(vq.initialized)


def test_random_start_picks_vectors_of_the_first_batch_and_not_after_loading():
    z = torch.randn(40, 3)
    vq = VectorQuantizer(8, 3, ema=False, init="random")
    assert not vq.initialized
    vq(grid(z))
    assert torch.cdist(vq.codes.detach(), z).min(-1).values.max() < 1e-6
    assert len(set(map(tuple, vq.codes.tolist()))) == 8  # no repeats
    loaded = VectorQuantizer(8, 3, ema=False, init="random")
    loaded.load_state_dict(vq.state_dict())
    loaded(grid(torch.randn(40, 3) + 50))
    assert torch.equal(loaded.codes, vq.codes)


def test_state_dict_round_trip_gives_identical_outputs():
    vq = VectorQuantizer(6, 3, restart_after=2)
    for _ in range(4):
        vq(torch.randn(2, 3, 4, 4))
    config = json.loads(json.dumps(vq.config))
    assert config.pop("type") == "VectorQuantizer"
    copy = VectorQuantizer(**config)
    copy.load_state_dict(vq.state_dict())
    z = torch.randn(2, 3, 4, 4)
    a, b = vq.eval()(z), copy.eval()(z)
    assert torch.equal(a.z_q, b.z_q) and torch.equal(a.indices, b.indices)
    assert set(vq.state_dict()) == {
        "codes",
        "cluster_size",
        "embed_sum",
        "initialized",
        "unused_steps",
    }
    assert [name for name, _ in vq.named_parameters()] == []


def test_cosine_mode_picks_by_angle_not_distance():
    codes = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
    z = grid(torch.tensor([[1.0, 0.1]]))
    assert ready(VectorQuantizer(2, 2), codes).eval()(z).indices.item() == 1
    out = ready(VectorQuantizer(2, 2, cosine=True), codes).eval()(z)
    assert out.indices.item() == 0
    assert torch.allclose(out.z_q.flatten(), torch.tensor([1.0, 0.0]))  # the unit code


def test_cosine_mode_is_the_argmax_of_cosine_similarity():
    z, codes = torch.randn(50, 4), torch.randn(10, 4)
    expected = torch.nn.functional.cosine_similarity(z[:, None], codes[None], dim=-1).argmax(-1)
    vq = ready(VectorQuantizer(10, 4, cosine=True, chunk_size=8), codes).eval()
    assert torch.equal(vq(grid(z)).indices[0], expected)


def test_eval_mode_updates_no_buffer_and_does_not_initialize():
    vq = VectorQuantizer(4, 2, restart_after=1).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(3, 2, 5))
    after = vq.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not vq.initialized


def test_perplexity_and_usage_of_uniform_and_single_code_histograms():
    codes = torch.randn(4, 3)
    vq = ready(VectorQuantizer(4, 3), codes).eval()
    uniform = vq(grid(codes.repeat(2, 1)))
    assert torch.allclose(uniform.perplexity, torch.tensor(4.0)) and uniform.usage == 1
    single = vq(grid(codes[1:2].repeat(5, 1)))
    assert torch.allclose(single.perplexity, torch.tensor(1.0)) and single.usage == 0.25


def test_usage_fraction_counts_codes_since_the_last_reset():
    codes = torch.randn(4, 3)
    vq = ready(VectorQuantizer(4, 3), codes).eval()
    vq(grid(codes[:1]))
    vq(grid(codes[2:3]))
    assert vq.usage_fraction() == 0.5
    vq.reset_usage()
    vq(grid(codes[3:4]))
    assert vq.usage_fraction() == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_codes": 0}, "num_codes must be a positive int, got 0"),
        ({"code_dim": 2.5}, "code_dim must be a positive int"),
        ({"decay": 1.0}, r"decay must be a number in \(0, 1\), got 1.0"),
        ({"decay": 0}, r"decay must be a number in \(0, 1\)"),
        ({"eps": 0.0}, "eps must be a number > 0"),
        ({"beta": -1}, "beta must be a number >= 0, got -1"),
        ({"init": "kmeans++"}, r"init must be one of \('kmeans', 'random'\), got 'kmeans\+\+'"),
        ({"restart_after": -1}, "restart_after must be an int >= 0"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"kmeans_iters": -1}, "kmeans_iters must be an int >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"num_codes": 4, "code_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**args)


def test_bad_inputs_are_named():
    vq = VectorQuantizer(4, 3)
    with pytest.raises(ValueError, match=r"z of shape \(b, 3, \*spatial\), got \(2, 5, 4, 4\)"):
        vq(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        vq(torch.randn(3))
    with pytest.raises(
        TypeError, match="indices must be an integer tensor, got dtype torch.float32"
    ):
        vq.lookup(torch.zeros(2, 3))


def _ddp_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different random picks per rank: the broadcast must align them
    quantizers = [_ddp_quantizer(0), _ddp_quantizer(1), VectorQuantizer(5, 2, init="kmeans")]
    for z in _ddp_batches():
        for vq in quantizers:
            vq(z[rank::2])
    torch.save([vq.state_dict() for vq in quantizers], f"{out}{rank}.pt")
    dist.destroy_process_group()


def _ddp_quantizer(restart_after: int) -> VectorQuantizer:
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [100.0, 100.0]])
    return ready(VectorQuantizer(5, 2, decay=0.8, restart_after=restart_after), codes)


def _ddp_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randn(4, 2, 3, 3, generator=g) for _ in range(3)]


@pytest.mark.slow
def test_two_ranks_sum_their_statistics_and_share_one_codebook(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2)
    (plain0, restart0, init0), (plain1, restart1, init1) = (
        torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)
    )
    single = _ddp_quantizer(0)
    for z in _ddp_batches():
        single(z)
    for name, value in single.state_dict().items():  # two half batches = one whole batch
        assert torch.allclose(plain0[name], value) and torch.equal(plain0[name], plain1[name])
    assert restart0["codes"][4].abs().max() < 50  # the far code was restarted ...
    assert all(torch.equal(restart0[k], restart1[k]) for k in restart0)  # ... alike on both
    assert all(torch.equal(init0[k], init1[k]) for k in init0)  # rank 0's k-means start

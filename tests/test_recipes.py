"""A recipe holds its model and every training setting, and scales them to any run length."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from autoenc import KLWarmup
from autoenc.data import dynamic_binarize
from autoenc.recipes import Recipe, recommended_vae, recommended_vae_recipe


def test_the_recommended_recipe_is_the_measured_one():
    recipe = recommended_vae_recipe()
    # The settings the measured results are for: 60 epochs of 469 steps at batch 128.
    assert (recipe.epochs, recipe.batch_size, recipe.lr) == (60, 128, 1e-3)
    assert (recipe.lr_schedule, recipe.scheduler_interval, recipe.warmup) == ("cosine", "step", 0.1)
    assert recipe.transform is dynamic_binarize and recipe.likelihood == "bernoulli"
    assert recipe.total_steps(60_000) == 60 * 469
    reference = recommended_vae()
    assert recipe.model.config == reference.config
    assert [p.shape for p in recipe.model.parameters()] == [p.shape for p in reference.parameters()]


@pytest.mark.parametrize("epochs", [1, 60, 120])
def test_warmup_and_decay_scale_with_the_run(epochs):
    recipe = recommended_vae_recipe(latent_dim=2, hidden=(8,))
    total = recipe.total_steps(1000, epochs=epochs)
    assert total == epochs * 8  # ceil(1000 / 128) steps per epoch
    (warmup,) = recipe.callbacks(total)
    assert isinstance(warmup, KLWarmup) and warmup.length == round(0.1 * total)

    optimizer = torch.optim.SGD(recipe.model.parameters(), lr=recipe.lr)
    scheduler = recipe.scheduler(total)(optimizer)
    rates = []
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    half = total // 2
    assert rates[half - 1] == pytest.approx(1e-3 * (1 + math.cos(math.pi * half / total)) / 2)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_constant_rate_and_no_warmup_add_nothing():
    recipe = dataclasses.replace(recommended_vae_recipe(), lr_schedule="constant", warmup=0.0)
    assert recipe.scheduler(100) is None
    assert recipe.callbacks(100) == []
    assert recipe.epochs == 60  # the rest stays


def test_a_recipe_cannot_be_changed_in_place():
    recipe = recommended_vae_recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.lr = 1.0


def test_repr_shows_the_settings_not_the_model():
    text = repr(recommended_vae_recipe())
    assert text.startswith("Recipe(epochs=60, batch_size=128, lr=0.001, lr_schedule='cosine'")
    assert text.endswith("transform=dynamic_binarize)") and "Linear" not in text


@pytest.mark.parametrize(
    ("change", "error", "named"),
    [
        ({"model": "vae"}, TypeError, "model"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"batch_size": 2.5}, ValueError, "batch_size"),
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr_schedule": "linear"}, ValueError, "lr_schedule"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval"),
        ({"warmup": 1.5}, ValueError, "warmup"),
    ],
)
def test_bad_settings_are_refused_by_name(change, error, named):
    with pytest.raises(error, match=named):
        dataclasses.replace(recommended_vae_recipe(latent_dim=2, hidden=(8,)), **change)


def test_run_length_arguments_are_checked():
    recipe = Recipe(model=torch.nn.Linear(1, 1), epochs=2, batch_size=4, lr=0.1)
    assert recipe.total_steps(10) == 2 * 3 and recipe.scheduler(6) is None
    with pytest.raises(ValueError, match="num_examples"):
        recipe.total_steps(0)
    with pytest.raises(ValueError, match="total_steps"):
        recipe.callbacks(-1)


def test_fit_kwargs_train_the_recipe_for_the_run_asked_for():
    from autoenc import Callback, fit

    class Rates(Callback):
        def __init__(self):
            self.rates = []

        def on_batch_end(self, state):
            self.rates.append(state.optimizer.param_groups[0]["lr"])

    recipe = recommended_vae_recipe(latent_dim=2, hidden=(8,))
    rates = Rates()
    kwargs = recipe.fit_kwargs(300, epochs=2, callbacks=[rates])
    warmup, last = kwargs["callbacks"]
    assert isinstance(warmup, KLWarmup) and warmup.length == round(0.1 * 2 * 3) and last is rates
    x = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    result = fit(recipe.model, x, **kwargs, seed=0, device="cpu", verbose=False)
    assert result.state.epochs_completed == 2 and len(rates.rates) == 2 * 3  # ceil(300 / 128)
    assert rates.rates[0] < recipe.lr and rates.rates[-1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="epochs"):
        recipe.fit_kwargs(300, epochs=0)


def test_the_fast_preset_changes_only_activation_rate_length_and_precision():
    from autoenc.recipes import fast_vae_recipe

    fast, recommended = fast_vae_recipe(), recommended_vae_recipe()
    same = ["batch_size", "lr_schedule", "scheduler_interval", "warmup", "transform"]
    assert all(getattr(fast, f) == getattr(recommended, f) for f in same)
    assert (fast.epochs, fast.lr, fast.precision) == (20, 2.5e-3, "auto")
    shapes = [p.shape for p in fast.model.parameters()]
    assert shapes == [p.shape for p in recommended.model.parameters()]
    acts = {type(m).__name__ for m in fast.model.modules() if not list(m.children())}
    assert "SiLU" in acts and "ReLU" not in acts

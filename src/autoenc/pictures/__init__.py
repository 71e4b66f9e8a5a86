"""Pictures of what a model learned (image grids, interpolations, traversals, plots) and the
callbacks that draw them during training (PNG files, Visdom, TensorBoard).

torchvision, Pillow, matplotlib, visdom and tensorboard are imported on first use, never here.
"""

from __future__ import annotations

from autoenc.pictures.dashboards import ImageSnapshots, TensorBoardDashboard
from autoenc.pictures.grids import (
    class_grid,
    interpolate,
    prior_grid,
    prior_samples,
    reconstruction_grid,
    reconstructions,
    traverse,
)
from autoenc.pictures.images import as_images, image_grid, save_image, to_uint8
from autoenc.pictures.plots import latent_scatter, plot_history
from autoenc.pictures.visdom import VisdomDashboard

__all__ = [
    "as_images",
    "image_grid",
    "to_uint8",
    "save_image",
    "reconstructions",
    "prior_samples",
    "reconstruction_grid",
    "prior_grid",
    "class_grid",
    "interpolate",
    "traverse",
    "latent_scatter",
    "plot_history",
    "ImageSnapshots",
    "VisdomDashboard",
    "TensorBoardDashboard",
]

"""Recipes: the seam between structures and score matching, and trained-checkpoint I/O.

A recipe owns the encoding of a structure as a diffusion state, the forward process, the loss and
the sampler, for one kind of structure; the training loop (:mod:`pipeline.train`) and generation
(:mod:`pipeline.generate`) only talk to the :class:`Recipe` protocol. Two recipes implement it:

* :class:`pipeline.molecule_recipe.MoleculeRecipe` (``kind="molecule"``, QM9, EGNN);
* :class:`pipeline.crystal_recipe.CrystalRecipe` (``kind="crystal"``, Perov-5 / MP-20, CSPNet).

:data:`RecipeConfig` is the pydantic union of their configs, discriminated by ``kind`` (so a
checkpoint's recipe JSON, or ``TrainConfig.recipe``, is validated into the right one);
:func:`recipe_from_config` rebuilds a recipe; :func:`save_trained` / :func:`load_trained` write and
read a trained network with its recipe and atom-count histogram. The helpers both recipes share
(element index, the batch of a sample) live below them in :mod:`pipeline.encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, Field, TypeAdapter
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from models.checkpoint import CheckpointError, load_checkpoint, read_run, save_checkpoint
from pipeline.crystal_recipe import CrystalRecipe, CrystalRecipeConfig
from pipeline.molecule_recipe import MoleculeRecipe, MoleculeRecipeConfig
from pipeline.samplers import SamplerConfig

RecipeConfig = Annotated[MoleculeRecipeConfig | CrystalRecipeConfig, Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(RecipeConfig)
_RECIPES = {"molecule": MoleculeRecipe, "crystal": CrystalRecipe}


@runtime_checkable
class Recipe(Protocol):
    """What training and generation need of a recipe (states are the recipe's own type)::

    recipe.config                         typed pydantic config; config.model_dump() is JSON
    recipe.build_model() -> nn.Module     a fresh network (saved with models.checkpoint)
    recipe.encode(batch) -> state         data Batch -> diffusion state at t = 0
    recipe.decode(state, batch) -> list[Data]
    recipe.prior(batch, generator, budget) -> state    a draw of the law at t = 1
    recipe.loss(model, batch, generator) -> (num_graphs,)   per-graph loss of a Batch
    recipe.sample(model, num_atoms (n,), sampler, generator, prefix) -> (list[Data], nfe)
    """

    config: MoleculeRecipeConfig | CrystalRecipeConfig

    def build_model(self) -> nn.Module: ...

    def encode(self, batch: Batch): ...

    def decode(self, state, batch: Tensor, prefix: str = "sample") -> list[Data]: ...

    def prior(self, batch: Tensor, generator: torch.Generator | None, budget: float = 0.1): ...

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> Tensor: ...

    def sample(
        self,
        model: nn.Module,
        num_atoms: Tensor,
        sampler: SamplerConfig,
        generator: torch.Generator | None = None,
        prefix: str = "sample",
    ) -> tuple[list[Data], int]: ...


def recipe_config(config: dict | BaseModel) -> MoleculeRecipeConfig | CrystalRecipeConfig:
    """The typed config of ``{"kind": "molecule" | "crystal", ...}`` (a dict or a config).

    ``ValueError`` (pydantic's ``ValidationError``) names an unknown kind or an invalid field.
    """
    if isinstance(config, MoleculeRecipeConfig | CrystalRecipeConfig):
        return config
    data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
    kind = data.get("kind")
    if kind not in _RECIPES:
        raise ValueError(f"unknown recipe kind {kind!r}: expected 'molecule' or 'crystal'")
    return _ADAPTER.validate_python(data)


def recipe_from_config(config: dict | BaseModel) -> Recipe:
    """Rebuild the recipe a config describes (``{"kind": "molecule" | "crystal", ...}``)."""
    cfg = recipe_config(config)
    return _RECIPES[cfg.kind](cfg)


@dataclass
class Trained:
    """A trained network with everything needed to sample from it.

    ``num_atoms`` maps an atom count to its frequency in the training split (the histogram that
    generation draws sizes from); ``info`` holds the rest of the run metadata (step, data set).
    """

    recipe: Recipe
    model: nn.Module
    num_atoms: dict[int, int]
    info: dict


def save_trained(
    path: str | Path, recipe: Recipe, model: nn.Module, num_atoms: dict[int, int], **info
) -> Path:
    """An ``ldsm-checkpoint`` at ``path`` whose ``run`` block holds the recipe and the histogram."""
    run = {
        "recipe": recipe.config.model_dump(mode="json"),
        "num_atoms": {str(k): int(v) for k, v in sorted(num_atoms.items())},
        **info,
    }
    return save_checkpoint(model, path, run=run)


def load_trained(path: str | Path) -> Trained:
    """Read a checkpoint written by :func:`save_trained`; :class:`CheckpointError` names the problem."""
    model = load_checkpoint(path)
    run = dict(read_run(path))
    if "recipe" not in run or "num_atoms" not in run:
        raise CheckpointError(
            f"{path}: no recipe / num_atoms in its run metadata; not a trained run"
        )
    try:
        recipe = recipe_from_config(run.pop("recipe"))
        num_atoms = {int(k): int(v) for k, v in run.pop("num_atoms").items()}
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid run metadata ({err})") from err
    if recipe.config.model != model.cfg:
        raise CheckpointError(f"{path}: the recipe's network config differs from the saved network")
    model.eval()
    return Trained(recipe, model, num_atoms, run)


__all__ = [
    "Recipe",
    "RecipeConfig",
    "Trained",
    "load_trained",
    "recipe_config",
    "recipe_from_config",
    "save_trained",
]

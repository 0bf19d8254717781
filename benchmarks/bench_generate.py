"""Generation speed: seconds per 19-atom molecule -> BENCHMARKS.md section `generate`.

The reverse-SDE sampler of :mod:`pipeline.recipes` (Euler-Maruyama, NFE = steps) on batches of
19-atom molecules, with an untrained EGNN (weights do not change the cost) at EDM's QM9 size
(4 x 128) and its full size (9 x 256), at 50 and 1000 NFE. Each configuration runs the same
sampler, process (EDM's linear VP drift, exact Gaussian prior) and weights three ways in the same
process, one after the other:

- ``sparse``: our batched EGNN on per-molecule edges (what ``ldsm generate`` runs);
- ``padded 19``: EDM's dense all-pairs layout (``models/egnn_dense.py``), no padding waste;
- ``padded 29``: the same, every molecule padded to 29 atoms, as EDM's sampler does for QM9.

Times are CPU seconds of this process on one thread (``time.process_time``): other jobs share the
cores, and CPU time does not count waiting for them. Ratios are measured in the same run. EDM's own
numbers (issue 6, its code on this kind of machine) are printed alongside, marked as quoted.
One more row times the default recipe (physical drift: its prior runs Langevin steps first).

Usage: ``python benchmarks/bench_generate.py [--mols 8] [--mols-long 2] [--no-write]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from models.config import EGNNConfig  # noqa: E402
from models.egnn_dense import dense_forward  # noqa: E402
from pipeline.molecule_recipe import (  # noqa: E402
    MoleculeRecipe,
    MoleculeRecipeConfig,
    ProcessConfig,
)
from pipeline.samplers import SamplerConfig, run_sampler  # noqa: E402

ATOMS, EDM_PAD = 19, 29
# EDM's own code, seconds per 19-atom molecule, quoted in issue 6 (not measured here).
EDM_QUOTED = {
    ((4, 128), 50): "0.33 (1.07 padded to 29)",
    ((9, 256), 50): "2.7",
    ((4, 128), 1000): "5.5",
}


class Padded(nn.Module):
    """The score-network protocol on EDM's padded layout: every molecule padded to ``pad`` atoms
    (or its batch's largest), all pairs, masks; the same weights as ``model``."""

    def __init__(self, model: nn.Module, pad: int):
        super().__init__()
        self.model, self.pad = model, pad

    def forward(self, x: Tensor, t: Tensor, batch: Tensor) -> Tensor:
        b = t.shape[0]
        n = torch.bincount(batch, minlength=b)
        width = max(self.pad, int(n.max()))
        mask = torch.arange(width)[None, :] < n[:, None]
        dense = x.new_zeros(b, width, x.shape[1])
        dense[mask] = x
        vel, h = dense_forward(self.model, dense[..., :3], dense[..., 3:], t, mask)
        return torch.cat([vel[mask], h[mask]], dim=1)


def recipe(layers: int, hidden: int, drift: str) -> MoleculeRecipe:
    model = EGNNConfig(layers=layers, hidden=hidden)
    return MoleculeRecipe(MoleculeRecipeConfig(model=model, process=ProcessConfig(drift=drift)))


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def sample_seconds(rec: MoleculeRecipe, net: nn.Module, mols: int, nfe: int) -> float:
    """CPU seconds per molecule of the reverse SDE from a fixed prior draw."""
    batch = torch.repeat_interleave(torch.arange(mols), ATOMS)
    x1 = rec.prior(batch, torch.Generator().manual_seed(0))
    x1 = type(x1)(*(v.float() for v in x1))
    sampler = SamplerConfig(kind="sde", nfe=nfe)
    score = rec.score(net)

    def run():
        with torch.no_grad():
            run_sampler(sampler, score, rec.process, x1, batch, torch.Generator().manual_seed(1))

    return cpu_seconds(run) / mols


def rows(mols: int, mols_long: int) -> list[str]:
    out = []
    for (layers, hidden), nfe, m in (
        ((4, 128), 50, mols),
        ((9, 256), 50, mols),
        ((4, 128), 1000, mols_long),
    ):
        torch.manual_seed(0)
        rec = recipe(layers, hidden, "linear")
        model = rec.build_model().eval()
        with torch.no_grad():  # the layouts compute the same function: checked once
            batch = torch.repeat_interleave(torch.arange(2), ATOMS)
            x = rec.process.join(rec.prior(batch, torch.Generator().manual_seed(2))).float()
            t = torch.tensor([0.3, 0.7])
            diff = (model(x, t, batch) - Padded(model, EDM_PAD)(x, t, batch)).abs().max().item()
        sparse = sample_seconds(rec, model, m, nfe)
        dense19 = sample_seconds(rec, Padded(model, ATOMS), m, nfe)
        dense29 = sample_seconds(rec, Padded(model, EDM_PAD), m, nfe)
        out.append(
            f"| EGNN {layers} x {hidden} | {nfe} | {m} | {sparse:.3f} | {dense19:.3f} | "
            f"{dense29:.3f} | {dense19 / sparse:.2f}x | {dense29 / sparse:.2f}x | "
            f"{EDM_QUOTED[(layers, hidden), nfe]} | {diff:.1e} |"
        )
    # The default recipe end to end: physical drift, Langevin prior included.
    torch.manual_seed(0)
    rec = recipe(4, 128, "physical")
    model = rec.build_model().eval()
    counts = torch.full((mols,), ATOMS)
    gen = torch.Generator().manual_seed(0)
    prior = cpu_seconds(lambda: rec.prior(torch.repeat_interleave(torch.arange(mols), ATOMS), gen))
    total = cpu_seconds(lambda: rec.sample(model, counts, SamplerConfig(nfe=50), gen))
    out.append(
        f"| EGNN 4 x 128, physical drift (default recipe, `recipe.sample`) | 50 | {mols} | "
        f"{total / mols:.3f} (prior {prior / mols:.3f}) | | | | | | |"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mols", type=int, default=8, help="molecules per 50-NFE row")
    parser.add_argument("--mols-long", type=int, default=2, help="molecules at 1000 NFE")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = [
        "| network | NFE | molecules | sparse (ours) s/mol | padded 19 s/mol | padded 29 s/mol "
        "| padded 19 / sparse | padded 29 / sparse | EDM's code s/mol (QUOTED, issue 6) "
        "| max abs diff sparse vs padded |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        *rows(args.mols, args.mols_long),
    ]
    body = (
        "Machine: 2-core CPU (shared with other jobs), torch 2.13 CPU, one torch thread.\n\n"
        "CPU seconds per 19-atom molecule (one thread, `time.process_time`), reverse SDE "
        "(Euler-Maruyama, NFE = steps), batch of all the row's molecules, untrained weights "
        "(the cost does not depend on them), EDM's linear VP process with its exact Gaussian "
        "prior. 'sparse' is our batched EGNN on per-molecule edges, as `ldsm generate` runs it; "
        "'padded' runs the same weights in EDM's dense all-pairs layout (`models/egnn_dense.py`) "
        "with molecules padded to 19 (no waste) or 29 atoms (EDM's QM9 sampler). Ratios come from "
        "the same run. The EDM column is QUOTED from issue 6 (EDM's own code, earlier, on this "
        "kind of machine), not measured here. The last row is the default recipe end to end "
        "(physical drift; its prior runs Langevin steps before the first network call).\n\n"
        + "\n".join(table)
    )
    print(body)
    if not args.no_write:
        command = (
            f"python benchmarks/bench_generate.py --mols {args.mols} --mols-long {args.mols_long}"
        )
        write_section("generate", "generate: seconds per molecule", command, body)


if __name__ == "__main__":
    main()

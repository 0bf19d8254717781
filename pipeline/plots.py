"""The plots of the reports (matplotlib figures written as PNG by its Agg canvas, without pyplot:
reports are written by flows and on servers, and pyplot's backend set-up costs ~0.4 s of import).

Each function draws one PNG from numbers of :mod:`pipeline.report_numbers` (or the screen's
metrics) and returns what a caller may print about it; generated data is orange, reference blue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report_numbers import density_axis, ema, pooled

GENERATED_COLOR, REFERENCE_COLOR = "tab:orange", "tab:blue"
BOND_BINS = np.linspace(0.0, 2.0, 81)  # 0.025 A bins up to EDM's longest single-bond threshold


def _subplots(*grid: int, figsize: tuple[float, float], **options):
    """``(figure, axes)`` as ``pyplot.subplots`` gives them, for a figure no GUI ever holds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **options)


def _save(fig, path: Path) -> None:
    """Lay out and write (100 dpi) a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_loss(metrics: dict[str, np.ndarray], path: Path, alpha: float = 0.05) -> int:
    """Loss (and EMA, and validation loss where present) against step; returns points plotted."""
    step, loss = metrics["step"], metrics["loss"]
    keep = np.isfinite(loss)
    fig, ax = _subplots(figsize=(6, 3.5))
    ax.plot(step[keep], loss[keep], color="0.75", lw=0.8, label="loss")
    if keep.any():
        ax.plot(step[keep], ema(loss[keep], alpha), color="tab:red", lw=1.5, label=f"EMA {alpha}")
    val = metrics.get("val_loss")
    if val is not None and np.isfinite(val).any():
        ax.plot(step[np.isfinite(val)], val[np.isfinite(val)], "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if keep.any() and (loss[keep] > 0).all() and loss[keep].max() > 20 * loss[keep].min():
        ax.set_yscale("log")  # the early loss is orders of magnitude above the plateau
    ax.legend()
    _save(fig, path)
    return int(keep.sum())


def plot_bond_lengths(
    generated: dict[str, np.ndarray], reference: dict[str, np.ndarray], path: Path, top: int = 5
) -> list[str]:
    """Density histograms of bond lengths, all pairs and the ``top`` commonest reference pairs."""
    common = sorted(reference or generated, key=lambda p: -(reference or generated)[p].size)
    panels = ["all", *common[:top]]
    fig, axes = _subplots(1, len(panels), figsize=(3 * len(panels), 2.8), squeeze=False)
    for ax, pair in zip(axes[0], panels, strict=True):
        for label, lengths, color in (
            ("reference", reference, REFERENCE_COLOR),
            ("generated", generated, GENERATED_COLOR),
        ):
            values = pooled(lengths, pair)
            if values.size:
                ax.hist(values, BOND_BINS, density=True, histtype="step", color=color, label=label)
        ax.set_title(pair)
        ax.set_xlabel("length / A")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)
    return panels


def plot_atom_counts(table: dict[int, tuple[int, int]], path: Path) -> None:
    """Side-by-side bars of the fraction of structures with each atom count."""
    sizes = np.array(list(table), dtype=float)
    gen = np.array([g for g, _ in table.values()], dtype=float)
    ref = np.array([r for _, r in table.values()], dtype=float)
    fig, ax = _subplots(figsize=(6, 3))
    ax.bar(sizes - 0.2, ref / max(ref.sum(), 1), 0.4, color=REFERENCE_COLOR, label="reference")
    ax.bar(sizes + 0.2, gen / max(gen.sum(), 1), 0.4, color=GENERATED_COLOR, label="generated")
    ax.set_xlabel("atoms per structure")
    ax.set_ylabel("fraction")
    ax.legend()
    _save(fig, path)


def plot_densities(generated: np.ndarray, reference: np.ndarray, path: Path) -> None:
    """Density histograms of crystal densities (g/cm^3) on :func:`density_axis`; the legend
    counts generated values off the axis."""
    low, high = density_axis(generated, reference)
    bins = np.linspace(low, high, 31)
    outside = int(((generated < low) | (generated > high)).sum())
    fig, ax = _subplots(figsize=(6, 3))
    for label, values, color in (
        ("reference", reference, REFERENCE_COLOR),
        (f"generated ({outside} off the axis)", generated, GENERATED_COLOR),
    ):
        inside = values[(values >= low) & (values <= high)]
        if inside.size:
            ax.hist(inside, bins, density=True, histtype="step", color=color, label=label)
    ax.set_xlim(low, high)
    ax.set_xlabel("density / g cm$^{-3}$")
    ax.set_ylabel("probability density")
    ax.legend()
    _save(fig, path)


def molecule_grid(mols: list, names: list[str], path: Path, per_row: int = 6) -> None:
    """A grid drawing of RDKit molecules with their names (RDKit's ``MolsToGridImage``)."""
    from rdkit.Chem import Draw

    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(200, 200), legends=names)
    image.save(str(path))


def plot_fractions(fractions: dict[str, float], path: Path) -> None:
    """Horizontal bars of metrics that are fractions in [0, 1] (the screen's report)."""
    fig, ax = _subplots(figsize=(6, 3))
    ax.barh(list(fractions), list(fractions.values()))
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction")
    _save(fig, path)

"""The Markdown report of a design run, with its plots (matplotlib, Agg backend; no Prefect).

:func:`design_report` writes ``run_dir/report.md`` and ``run_dir/plots/*.png``:

- ``loss.png``: the training loss of ``metrics.csv`` per logged step (skipped, non-finite steps
  left out), its exponential moving average (EMA) and the validation loss where logged;
- ``bond_lengths.png`` (molecules): lengths of the bonds that EDM's distance tables see (the same
  rule as the stability check, :func:`pipeline.molecule_checks.edm_bond_orders`), all pairs and
  the most common element pairs, generated against reference; merged atoms show up at the left;
- ``atoms.png``: atoms per structure, generated against reference (same integer bins);
- ``density.png`` (crystals): mass density in g/cm^3 from pymatgen of the valid generated crystals
  (CDVAE: structurally and compositionally valid, the set ``metrics.json``'s ``wdist_density``
  uses) against the reference; the axis spans the reference and the middle 98 % of the generated
  values, and the legend counts generated values beyond it;
- ``molecules.png``: a grid drawing of the generated molecules RDKit can sanitise (EDM bonds).

Every number the report prints comes from the functions below (``atom_count_table``,
``bond_length_summary``, ``density_summary``), so a test can recompute it. A structure that cannot
be measured (non-finite coordinates, a degenerate cell) is counted in the report as such, never a
crash: generated samples are exactly where such structures appear.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from pipeline import keys as K
from pipeline import molecule_checks as mc

GENERATED_COLOR, REFERENCE_COLOR = "tab:orange", "tab:blue"
BOND_BINS = np.linspace(0.0, 2.0, 81)  # 0.025 A bins up to EDM's longest single-bond threshold


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are written by flows and on servers
    import matplotlib.pyplot as plt

    return plt


def ema(values: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Exponential moving average ``m_k = (1 - alpha) m_{k-1} + alpha v_k``, ``m_0 = v_0``.

    ``values``: (n,) finite floats -> (n,). A bias-free start (``m_0 = v_0``) keeps the first
    points on the curve instead of pulling them towards zero.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for k, v in enumerate(values):
        # m + alpha (v - m): the same average, exact for a constant sequence
        out[k] = v if k == 0 else out[k - 1] + alpha * (v - out[k - 1])
    return out


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a training ``metrics.csv`` as float arrays (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {
        c: np.array([float(r[c]) if r.get(c) not in (None, "") else math.nan for r in rows])
        for c in columns
    }


def is_crystal(data: Data) -> bool:
    return getattr(data, K.LATTICE, None) is not None


def atom_counts(structures: list[Data]) -> np.ndarray:
    """(n,) int64 atoms per structure."""
    return np.array([int(d[K.Z].numel()) for d in structures], dtype=np.int64)


def atom_count_table(generated: list[Data], reference: list[Data]) -> dict[int, tuple[int, int]]:
    """``{atoms: (generated structures, reference structures)}`` over every size either set has."""
    gen, ref = Counter(atom_counts(generated).tolist()), Counter(atom_counts(reference).tolist())
    return {n: (gen.get(n, 0), ref.get(n, 0)) for n in sorted(set(gen) | set(ref))}


def _hill(symbol: str) -> tuple[int, str]:
    """Hill order: C, then H, then the rest alphabetically (so pairs read "C-H", "H-O")."""
    return ({"C": 0, "H": 1}.get(symbol, 2), symbol)


def bond_lengths(structures: list[Data]) -> dict[str, np.ndarray]:
    """EDM-bonded pair distances in Angstrom by element pair (``"C-H"``, symbols in Hill order).

    A pair is bonded when EDM's tables give it a bond order > 0 at its distance. Molecules with
    non-finite coordinates contribute nothing (they are counted by :func:`unmeasurable`).
    """
    out: dict[str, list[float]] = {}
    for d in structures:
        z, pos = d[K.Z].numpy(), d[K.POS].double().numpy()
        if not np.isfinite(pos).all():
            continue
        orders = mc.edm_bond_orders(z, pos)
        ii, jj = np.nonzero(np.triu(orders, 1))
        lengths = np.linalg.norm(pos[ii] - pos[jj], axis=1)
        for i, j, length in zip(ii.tolist(), jj.tolist(), lengths.tolist(), strict=True):
            a, b = sorted((mc.symbol(int(z[i])), mc.symbol(int(z[j]))), key=_hill)
            out.setdefault(f"{a}-{b}", []).append(length)
    return {k: np.asarray(v) for k, v in sorted(out.items())}


def unmeasurable(structures: list[Data]) -> int:
    """How many structures have non-finite coordinates (no bond length, no density)."""
    return sum(not bool(np.isfinite(d[K.POS].numpy()).all()) for d in structures)


def _pooled(lengths: dict[str, np.ndarray], pair: str) -> np.ndarray:
    """The lengths of one element pair, or of all pairs together for ``pair == "all"``."""
    if pair == "all":
        return np.concatenate(list(lengths.values())) if lengths else np.zeros(0)
    return lengths.get(pair, np.zeros(0))


def bond_length_summary(
    generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, dict[str, float | int | None]]:
    """Per element pair (and ``"all"``): count and mean length of generated and reference bonds."""
    out = {}
    for pair in ["all", *sorted(set(generated) | set(reference))]:
        row = {}
        for label, lengths in (("generated", generated), ("reference", reference)):
            values = _pooled(lengths, pair)
            row[f"{label}_n"] = int(values.size)
            row[f"{label}_mean"] = float(values.mean()) if values.size else None
        out[pair] = row
    return out


def valid_crystals(structures: list[Data]) -> list[Data]:
    """The crystals that pass CDVAE's structural and compositional checks (the screen's ``valid``,
    :func:`pipeline.metrics.check_crystals`), in order."""
    from pipeline.crystal_checks import compositional_validity, structural_validity

    out = []
    for d in structures:
        lattice = d[K.LATTICE].numpy().reshape(3, 3).astype(np.float64)
        frac, z = d[K.FRAC].numpy().astype(np.float64), d[K.Z].numpy()
        if structural_validity(lattice, frac, z).ok and compositional_validity(z).ok:
            out.append(d)
    return out


def densities(structures: list[Data]) -> np.ndarray:
    """(m,) mass densities in g/cm^3 (pymatgen) of the crystals that make a valid cell."""
    from pipeline.crystal_checks import density, to_structure

    out = []
    for d in structures:
        s = to_structure(d[K.LATTICE].numpy().reshape(3, 3), d[K.FRAC].numpy(), d[K.Z].numpy())
        if s is not None and s.volume > 0 and math.isfinite(s.density):
            out.append(density(s))
    return np.asarray(out, dtype=np.float64)


def density_summary(generated: np.ndarray, reference: np.ndarray) -> dict[str, float | int | None]:
    """Counts, means and standard deviations of two density samples, and their 1-D Wasserstein
    distance (the CDVAE metric, :func:`pipeline.crystal_checks.wdist`)."""
    from pipeline.crystal_checks import wdist

    out: dict[str, float | int | None] = {}
    for label, values in (("generated", generated), ("reference", reference)):
        out[f"{label}_n"] = int(values.size)
        out[f"{label}_mean"] = float(values.mean()) if values.size else None
        out[f"{label}_std"] = float(values.std()) if values.size else None
    out["wdist"] = wdist(generated.tolist(), reference.tolist())
    return out


def plot_loss(metrics: dict[str, np.ndarray], path: Path, alpha: float = 0.05) -> int:
    """Loss (and EMA, and validation loss where present) against step; returns points plotted."""
    plt = _plt()
    step, loss = metrics["step"], metrics["loss"]
    keep = np.isfinite(loss)
    fig, ax = plt.subplots(figsize=(6, 3.5))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return int(keep.sum())


def plot_bond_lengths(
    generated: dict[str, np.ndarray], reference: dict[str, np.ndarray], path: Path, top: int = 5
) -> list[str]:
    """Density histograms of bond lengths, all pairs and the ``top`` commonest reference pairs."""
    plt = _plt()
    common = sorted(reference or generated, key=lambda p: -(reference or generated)[p].size)
    panels = ["all", *common[:top]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 2.8), squeeze=False)
    for ax, pair in zip(axes[0], panels, strict=True):
        for label, lengths, color in (
            ("reference", reference, REFERENCE_COLOR),
            ("generated", generated, GENERATED_COLOR),
        ):
            values = _pooled(lengths, pair)
            if values.size:
                ax.hist(values, BOND_BINS, density=True, histtype="step", color=color, label=label)
        ax.set_title(pair)
        ax.set_xlabel("length / A")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return panels


def plot_atom_counts(table: dict[int, tuple[int, int]], path: Path) -> None:
    """Side-by-side bars of the fraction of structures with each atom count."""
    plt = _plt()
    sizes = np.array(list(table), dtype=float)
    gen = np.array([g for g, _ in table.values()], dtype=float)
    ref = np.array([r for _, r in table.values()], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(sizes - 0.2, ref / max(ref.sum(), 1), 0.4, color=REFERENCE_COLOR, label="reference")
    ax.bar(sizes + 0.2, gen / max(gen.sum(), 1), 0.4, color=GENERATED_COLOR, label="generated")
    ax.set_xlabel("atoms per structure")
    ax.set_ylabel("fraction")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def density_axis(generated: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """The plotted density range: the reference's range joined with the 1st to 99th percentile of
    the generated values, so that a few absurd samples cannot stretch the axis."""
    parts = [reference] if reference.size else []
    if generated.size:
        parts.append(np.percentile(generated, [1, 99]))
    both = np.concatenate(parts) if parts else np.array([0.0, 1.0])
    low, high = float(both.min()), float(both.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def plot_densities(generated: np.ndarray, reference: np.ndarray, path: Path) -> None:
    plt = _plt()
    low, high = density_axis(generated, reference)
    bins = np.linspace(low, high, 31)
    outside = int(((generated < low) | (generated > high)).sum())
    fig, ax = plt.subplots(figsize=(6, 3))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def drawable_molecules(structures: list[Data], limit: int = 24) -> tuple[list, list[str]]:
    """Up to ``limit`` sanitised RDKit molecules (heavy atoms, 2-D coordinates) and their names,
    in input order; molecules RDKit cannot sanitise with EDM bonds are left out."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols, names = [], []
    for d in structures:
        if len(mols) == limit:
            break
        mol, _ = mc.sanitized_mol(d[K.Z].numpy(), d[K.POS].numpy())
        if mol is None:
            continue
        mol = Chem.RemoveHs(mol)
        AllChem.Compute2DCoords(mol)
        mols.append(mol)
        names.append(str(getattr(d, K.NAME, "")))
    return mols, names


def molecule_grid(mols: list, names: list[str], path: Path, per_row: int = 6) -> None:
    from rdkit.Chem import Draw

    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(200, 200), legends=names)
    image.save(str(path))


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: dict, prefix: str = "") -> list[str]:
    """Rows of a flat (or one-level nested) metrics dict, e.g. the screen's metrics.json."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += _metrics_table(value, f"{prefix}{key}.")
        else:
            rows.append(f"| {prefix}{key} | {_fmt(value)} |")
    return rows


def relaxation_section(generated: dict, relaxed: dict) -> list[str]:
    """Markdown lines comparing the screen's metrics as generated and after relaxation, side by
    side and labelled: crystals after CHGNet (``relaxed = {"crystals": metrics, "chgnet":
    pipeline.relax.write_relaxed's summary}``) or molecules after GFN2-xTB (``{"molecules":
    metrics, "xtb": pipeline.relax.write_relaxed_molecules's summary}``). ``generated`` is the
    metrics of the same kind as generated."""
    if "xtb" in relaxed:
        xtb, after = relaxed["xtb"], relaxed.get("molecules") or {}
        lines = [
            "## GFN2-xTB relaxation",
            "",
            f"{xtb.get('relaxed', 0)} of {xtb.get('n', 0)} molecules relaxed, "
            f"{xtb.get('converged', 0)} to convergence (the others had one atom, or xTB failed "
            "on them: see relaxed/relax.csv). Means over the relaxed ones: relaxation energy "
            f"{_fmt(xtb.get('mean_relaxation_energy'))} eV, RMSD of the move "
            f"{_fmt(xtb.get('mean_rmsd'))} A, HOMO-LUMO gap {_fmt(xtb.get('mean_gap'))} eV. The "
            "raw model's metrics (as generated) are the ones to compare with the literature.",
        ]
    else:
        chgnet, after = relaxed.get("chgnet") or {}, relaxed.get("crystals") or {}
        lines = [
            "## CHGNet relaxation",
            "",
            f"{chgnet.get('relaxed', 0)} of {chgnet.get('n', 0)} crystals relaxed (the others "
            "were not structurally valid or CHGNet failed on them: see relaxed/relax.csv). "
            "CHGNet energy per atom, mean over the relaxed ones: "
            f"{_fmt(chgnet.get('mean_energy_per_atom'))} eV as generated, "
            f"{_fmt(chgnet.get('mean_relaxed_energy_per_atom'))} eV relaxed.",
        ]
    lines += ["", "| metric | as generated | relaxed |", "| --- | --- | --- |"]
    for key, value in generated.items():
        if not isinstance(value, dict):
            lines.append(f"| {key} | {_fmt(value)} | {_fmt(after.get(key))} |")
    return lines + [""]


def design_report(
    run_dir: str | Path,
    generated: list[Data],
    reference: list[Data],
    metrics: dict,
    metrics_csv: str | Path | None = None,
    title: str = "Design run",
    n_generated: int | None = None,
) -> Path:
    """Write ``run_dir/report.md`` and its plots under ``run_dir/plots``; returns the report path.

    ``generated`` and ``reference``: structures (molecules or crystals, see ``pipeline.keys``);
    ``metrics``: the screen's metrics (a dict, nested one level at most); ``metrics_csv``: the
    training log (skipped when None or missing, e.g. a run that loaded a checkpoint);
    ``n_generated``: how many structures were generated when some of them could not be read
    back into ``generated`` (degenerate samples a file format cannot hold).
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    gen_mol = [d for d in generated if not is_crystal(d)]
    ref_mol = [d for d in reference if not is_crystal(d)]
    gen_cry = [d for d in generated if is_crystal(d)]
    ref_cry = [d for d in reference if is_crystal(d)]
    lines = [f"# {title}", ""]
    total = len(generated) if n_generated is None else n_generated
    unread = total - len(generated)
    lines += [
        f"{total} generated structures ({len(gen_mol)} molecules, {len(gen_cry)} crystals"
        + (f", {unread} not readable: degenerate, see generation.json" if unread else "")
        + f"); {len(reference)} reference structures.",
        "",
    ]
    if metrics:
        lines += ["## Screening metrics", "", "| metric | value |", "| --- | --- |"]
        lines += _metrics_table(metrics) + [""]

    if metrics_csv is not None and Path(metrics_csv).exists():
        log = read_metrics_csv(metrics_csv)
        if log.get("step") is not None and log["step"].size:
            points = plot_loss(log, plots / "loss.png")
            finite = log["loss"][np.isfinite(log["loss"])]
            last = f"{finite[-1]:.4g}" if finite.size else "n/a"
            lines += [
                "## Training",
                "",
                f"{points} logged steps up to step {int(log['step'][-1])}; last loss {last}; "
                f"skipped steps {int(np.nan_to_num(log['skipped'])[-1])}.",
                "",
                "![loss curve](plots/loss.png)",
                "",
            ]

    if gen_mol or ref_mol:
        gen_bonds, ref_bonds = bond_lengths(gen_mol), bond_lengths(ref_mol)
        panels = plot_bond_lengths(gen_bonds, ref_bonds, plots / "bond_lengths.png")
        summary = bond_length_summary(gen_bonds, ref_bonds)
        lines += [
            "## Bond lengths (EDM-bonded pairs)",
            "",
            f"Generated molecules with non-finite coordinates: {unmeasurable(gen_mol)}. "
            f"Panels: {', '.join(panels)}.",
            "",
            "| pair | generated bonds | generated mean / A | reference bonds | reference mean / A |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {pair} | {r['generated_n']} | {_fmt(r['generated_mean'])} | {r['reference_n']} "
            f"| {_fmt(r['reference_mean'])} |"
            for pair, r in summary.items()
        ]
        lines += ["", "![bond lengths](plots/bond_lengths.png)", ""]

    table = atom_count_table(generated, reference)
    if table:
        plot_atom_counts(table, plots / "atoms.png")
        lines += [
            "## Atoms per structure",
            "",
            "| atoms | generated | reference |",
            "| --- | --- | --- |",
            *[f"| {n} | {g} | {r} |" for n, (g, r) in table.items()],
            "",
            "![atoms per structure](plots/atoms.png)",
            "",
        ]

    if gen_cry or ref_cry:
        gen_rho, ref_rho = densities(valid_crystals(gen_cry)), densities(ref_cry)
        plot_densities(gen_rho, ref_rho, plots / "density.png")
        s = density_summary(gen_rho, ref_rho)
        lines += [
            "## Density (g/cm^3)",
            "",
            "Generated: the valid crystals (structurally and compositionally, CDVAE), the set "
            "the screen's Wasserstein distance uses; reference: every crystal with a cell.",
            "",
            "| set | crystals | mean | std |",
            "| --- | --- | --- | --- |",
            f"| generated | {s['generated_n']} of {total - len(gen_mol)} "
            f"| {_fmt(s['generated_mean'])} "
            f"| {_fmt(s['generated_std'])} |",
            f"| reference | {s['reference_n']} of {len(ref_cry)} | {_fmt(s['reference_mean'])} "
            f"| {_fmt(s['reference_std'])} |",
            "",
            f"Wasserstein distance: {_fmt(s['wdist'])}.",
            "",
            "![density](plots/density.png)",
            "",
        ]

    if isinstance(metrics.get("relaxed"), dict):
        kind = "molecules" if "xtb" in metrics["relaxed"] else "crystals"
        lines += relaxation_section(metrics[kind], metrics["relaxed"])

    if gen_mol:
        mols, names = drawable_molecules(gen_mol)
        lines += ["## Generated molecules", ""]
        if mols:
            molecule_grid(mols, names, plots / "molecules.png")
            lines += [
                f"The first {len(mols)} generated molecules that RDKit sanitises "
                "(EDM bonds, hydrogens hidden).",
                "",
                "![generated molecules](plots/molecules.png)",
                "",
            ]
        else:
            lines += ["None of the generated molecules could be sanitised by RDKit.", ""]

    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


__all__ = [
    "atom_count_table",
    "atom_counts",
    "bond_length_summary",
    "bond_lengths",
    "densities",
    "density_axis",
    "density_summary",
    "design_report",
    "drawable_molecules",
    "ema",
    "read_metrics_csv",
    "relaxation_section",
    "unmeasurable",
    "valid_crystals",
]

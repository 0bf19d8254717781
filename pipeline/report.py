"""The Markdown reports: a design run's (:func:`design_report`) and a screen's (:func:`screen_report`).

:func:`design_report` writes ``run_dir/report.md`` and ``run_dir/plots/*.png``:

- ``loss.png``: the training loss of ``metrics.csv`` per logged step (skipped, non-finite steps
  left out), its exponential moving average (EMA) and the validation loss where logged;
- ``bond_lengths.png`` (molecules): lengths of EDM-bonded pairs, all pairs and the most common
  element pairs, generated against reference; merged atoms show up at the left;
- ``atoms.png``: atoms per structure, generated against reference (same integer bins);
- ``density.png`` (crystals): density of the valid generated crystals against the reference; the
  axis spans the reference and the middle 98 % of the generated values, and the legend counts
  generated values beyond it;
- ``molecules.png``: a grid drawing of the generated molecules RDKit can sanitise (EDM bonds).

:func:`screen_report` is the screen's ``report.md`` with ``plots/<kind>_metrics.png``. Every
number the reports print comes from :mod:`pipeline.report_numbers` or the screen's metrics; the
plots are :mod:`pipeline.plots`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline import plots
from pipeline.report_numbers import (
    atom_count_table,
    bond_length_summary,
    bond_lengths,
    densities,
    density_summary,
    drawable_molecules,
    read_metrics_csv,
    unmeasurable,
    valid_crystals,
)
from pipeline.structures import Record, is_crystal


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
    generated: list[Record],
    reference: list[Record],
    metrics: dict,
    metrics_csv: str | Path | None = None,
    title: str = "Design run",
    n_generated: int | None = None,
    screen_rows: list[dict] | None = None,
) -> Path:
    """Write ``run_dir/report.md`` and its plots under ``run_dir/plots``; returns the report path.

    ``generated`` and ``reference``: structures (molecules or crystals, see ``pipeline.keys``);
    ``metrics``: the screen's metrics (a dict, nested one level at most); ``metrics_csv``: the
    training log (skipped when None or missing, e.g. a run that loaded a checkpoint);
    ``n_generated``: how many structures were generated when some of them could not be read
    back into ``generated`` (degenerate samples a file format cannot hold); ``screen_rows``: the
    screen's rows in rank order (:func:`pipeline.report_numbers.read_screen_rows`), whose first
    passing candidates the report shows (:func:`top_candidates_section`).
    """
    run_dir = Path(run_dir)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
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
            points = plots.plot_loss(log, plot_dir / "loss.png")
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
        panels = plots.plot_bond_lengths(gen_bonds, ref_bonds, plot_dir / "bond_lengths.png")
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
        plots.plot_atom_counts(table, plot_dir / "atoms.png")
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
        plots.plot_densities(gen_rho, ref_rho, plot_dir / "density.png")
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

    if screen_rows:
        lines += top_candidates_section(plot_dir, screen_rows, metrics.get("ranking") or {})

    if gen_mol:
        mols, names = drawable_molecules(gen_mol)
        lines += ["## Generated molecules", ""]
        if mols:
            plots.molecule_grid(mols, names, plot_dir / "molecules.png")
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


def screen_report(out: Path, rows: list[dict], metrics: dict, cutoff_name: str | None) -> str:
    """The screen's report (Markdown) for ``rows`` and ``metrics`` (:mod:`pipeline.metrics`), with
    ``out/plots/<kind>_metrics.png``: per kind the metrics, a plot of the fractions and the most
    common failure reasons; the coverage cutoffs (``cutoff_name``); read rejects and notes."""
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    lines = ["# Screening report", ""]
    for kind in ("molecules", "crystals"):
        m = metrics[kind]
        if not m["n"]:
            continue
        kind_rows = [r for r in rows if r["kind"] == kind[:-1]]
        passed = sum(1 for r in kind_rows if r.get("passed"))
        filtered = (metrics.get("ranking") or {}).get("filtered")
        lines += [
            f"## {kind.capitalize()} ({m['n']})",
            "",
            f"Passed every check{' and filter' if filtered else ''}: **{passed} of {m['n']}** "
            "(`passed` in screen.csv; written to `passing/` in rank order).",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        lines += [
            f"| {k} | {'n/a' if v is None else f'{v:.4g}'} |" for k, v in m.items() if k != "n"
        ]
        fractions = {k: v for k, v in m.items() if k not in ("n",) and v is not None}
        fractions = {k: v for k, v in fractions.items() if not k.startswith("wdist")}
        plots.plot_fractions(fractions, plot_dir / f"{kind}_metrics.png")
        lines += ["", f"![{kind} metrics](plots/{kind}_metrics.png)", "", "Most common failures:"]
        reasons = Counter(
            f"{col}: {r[col]}"
            for r in kind_rows
            for col in r
            if col.endswith("_reason") and isinstance(r[col], str) and not r[col].startswith("ok")
        )
        lines += [f"- {n} x {reason}" for reason, n in reasons.most_common(10)] or ["- none"]
        lines.append("")
    if metrics["crystals"]["n"]:
        lines.append(f"Coverage cutoffs: {cutoff_name or 'none (no reference data set named)'}.")
    unread = [r for r in rows if r["kind"] == "unread"]
    lines += ["", f"## Read rejects ({metrics['n_read_rejects']})", ""]
    lines += ["Files and records that could not be read; they are in no rate above.", ""]
    lines += [f"- {r['name']}: {r['read_reason']}" for r in unread[:20]] or ["- none"]
    if len(unread) > 20:
        lines.append(f"- ... and {len(unread) - 20} more (screen.csv, kind 'unread')")
    lines += [""] + top_candidates_section(plot_dir, rows, metrics.get("ranking") or {})
    lines += relaxed_structures_section(metrics)
    notes = Counter(r["read_note"] for r in rows if r.get("read_note"))
    if notes:
        lines += ["", "## Read notes", "", "Records read with a remark from the reader:", ""]
        lines += [f"- {n} x {note}" for note, n in notes.most_common(10)]
    return "\n".join(lines) + "\n"


def top_candidates_section(
    plot_dir: Path, rows: list[dict], ranking: dict, top: int = 6
) -> list[str]:
    """Markdown lines of the first ``top`` passing candidates of each kind by rank (``rows``
    ranked by :func:`pipeline.ranking.rank`, or read back by
    :func:`pipeline.report_numbers.read_screen_rows`): the rank expression and the filters'
    counts (``ranking``: the screen's ``{"rank_by": text or None, "filtered": {filter:
    removed}}``), a table of their properties (:data:`pipeline.ranking.PROPERTIES` that they
    have) and, for molecules, the 2-D drawing of their SMILES in ``plot_dir/top_molecules.png``
    (RDKit, hydrogens hidden)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from pipeline.ranking import PROPERTIES

    rank_by = ranking.get("rank_by")
    lines = ["## Top candidates", ""]
    if rank_by:
        lines.append(
            f"Ranked by the score `{rank_by}`, highest first, among the passing candidates "
            "(then the others); candidates without a property it needs come after those with it."
        )
    else:
        lines.append(
            "Ranked in the default order: passing candidates first, then more checks passed, "
            "then the lowest xTB relaxation energy or CHGNet relaxed energy per atom."
        )
    filtered = ranking.get("filtered") or {}
    if filtered:
        lines += ["", "Filters, applied in this order to the passing candidates:", ""]
        lines += [f"- `{text}` removed {n}" for text, n in filtered.items()]
    for kind in ("molecule", "crystal"):
        best = [r for r in rows if r["kind"] == kind and r.get("passed")][:top]
        if not any(r["kind"] == kind for r in rows):
            continue
        lines += ["", f"### {kind.capitalize()}s", ""]
        if not best:
            lines.append(f"No {kind} passed.")
            continue
        label = ["smiles"] if kind == "molecule" else ["formula"]
        scored = any(r.get("score") is not None for r in best)
        columns = (["score"] if scored else []) + [
            p for p, (k, _, _) in PROPERTIES.items() if k == kind and any(p in r for r in best)
        ]
        lines += [
            "| rank | name | " + " | ".join(label + columns) + " |",
            "| --- " * (2 + len(label) + len(columns)) + "|",
        ]
        lines += [
            "| " + " | ".join(_fmt(r.get(c)) for c in ["rank", "name", *label, *columns]) + " |"
            for r in best
        ]
        lines += ["", "Columns: " + "; ".join(
            f"`{c}` {PROPERTIES[c][1]}, {PROPERTIES[c][2]}" for c in columns if c in PROPERTIES
        ) + "."]  # fmt: skip
        if kind == "molecule":
            mols = [Chem.MolFromSmiles(r["smiles"]) for r in best]  # a passing one is valid
            for mol in mols:
                AllChem.Compute2DCoords(mol)
            names = [
                f"{r['rank']}. {r['name']}" + (f" (score {_fmt(r['score'])})" if scored else "")
                for r in best
            ]
            plots.molecule_grid(mols, names, plot_dir / "top_molecules.png", per_row=3)
            lines += ["", "![top molecules](plots/top_molecules.png)"]
    return lines + [""]


def relaxed_structures_section(metrics: dict) -> list[str]:
    """Markdown lines naming the files of the structures ``--xtb`` / ``--chgnet`` relaxed
    (the screen's ``metrics["xtb"]`` / ``metrics["chgnet"]``: the relaxation writers' summaries)."""
    lines = []
    for key, what, kind in (("xtb", "GFN2-xTB", "molecules"), ("chgnet", "CHGNet", "crystals")):
        summary = metrics.get(key)
        if summary:
            files = ", ".join(f"`{Path(f).name}`" for f in summary["files"])
            lines += [
                f"## Relaxed {kind} ({what})",
                "",
                f"{what} ran on {summary['n']} {kind} (the valid ones) and relaxed "
                f"{summary['relaxed']}; all {summary['n']} are in `relaxed/{kind}/` ({files}) in "
                "rank order, relaxed where they could be, with the energies before and after "
                "in `relax.csv`.",
                "",
            ]
    return lines


__all__ = [
    "design_report",
    "relaxation_section",
    "relaxed_structures_section",
    "screen_report",
    "top_candidates_section",
]

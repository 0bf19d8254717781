"""Issue 7.3 and 7.4: de novo crystals, linear against physical drift, with the published anchors.

Each run is an ``ldsm train`` run directory on a crystal data set (Perov-5 or Carbon-24; the shared
copies have ``val.csv`` and ``test.csv`` only, so the runs train on ``val`` with
``--split val --val-split test``). This script samples ``--n`` crystals from each run's EMA
checkpoint (atom counts from the training histogram) at every ``--nfe`` and scores them against the
``test`` split with the checks of ``ldsm screen``: structural and compositional (SMACT) validity,
CDVAE's coverage recall and precision (CrystalNN and Magpie fingerprints, CDVAE's cut-offs), and the
Wasserstein distances of density and number of elements between the valid samples and the test
set. Resumable: one JSON per (run, NFE) under ``--results``; a present file is reused. The test
set's fingerprints are cached under ``$LDSM_HOME/benchmarks`` (CrystalNN is slow).

    python -m benchmarks.quality.crystals --runs runs/c7-perov-exact-dsm-linear \
        runs/c7-perov-local-dsm-physical

``--csp`` evaluates structure-prediction runs (``ldsm train --csp``) instead, DiffCSP's protocol:
one structure per reference composition (the first ``--n`` cells of the split), matched to its
cell by pymatgen's ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)``; the match rate is the
fraction matched, the RMSE the mean ``get_rms_dist`` (normalised by ``(V / n)^(1/3)``) over the
matched ones. A prediction that fails CDVAE's structural check counts as unmatched.
``--no-coverage`` skips the CrystalNN fingerprints (minutes of CPU for the reference set).
The checks and fingerprints run on ``--processes`` processes (0: every core): CrystalNN costs about
0.1 CPU-s per Perov-5 cell, so a 10,000-crystal coverage run is 17 CPU-minutes of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks._report import write_section
from benchmarks.quality.qm9_methods import training_table
from pipeline import crystal_checks as cc
from pipeline import crystal_fingerprints as cfp
from pipeline import metrics as pm
from pipeline.cache import ldsm_home
from pipeline.crystal_process import CRYSTAL_CORRECTOR
from pipeline.datasets import load_dataset
from pipeline.recipes import load_trained
from pipeline.reference import fingerprints_in_parallel
from pipeline.samplers import SamplerConfig

CHECK_CHUNK = 100  # crystals checked per task of a process pool
COVERAGE_PREFIXES = (100, 200, 500, 1000, 2000, 5000)  # coverage_by_n's sample counts
RESULTS = Path(__file__).resolve().parent / "results" / "crystals"
# Published Perov-5 numbers (structural / compositional validity %, COV-R %, COV-P %, W density,
# W #elements): CDVAE (Xie et al. 2022, Table 3) and DiffCSP (Jiao et al. 2023, Table 4), each
# trained on the 11,356-crystal train split for hundreds of GPU epochs.
ANCHORS = {
    "perov-5": {
        "CDVAE": (100, 98.59, 99.45, 98.46, 0.126, 0.063),
        "DiffCSP": (100, 98.85, 99.74, 98.27, 0.013, 0.026),
    },
}
# Published CSP numbers (match rate %, RMSE), one sample per test composition, as issue 15 quotes
# them from DiffCSP (Jiao et al. 2023, Table 1); trained on the full train splits.
CSP_ANCHORS = {
    "perov-5": {"DiffCSP": (52.02, 0.0760)},
    "carbon-24": {"DiffCSP": (17.54, None)},
}


def checked(
    names: list, lattices: list, fracs: list, zs: list, fingerprints: bool, processes: int
) -> list[dict]:
    """:func:`pipeline.metrics.check_crystals` of the crystals, in order, on ``processes`` spawned
    processes (chunks of :data:`CHECK_CHUNK`; 1: this process)."""
    parts = [
        tuple(column[k : k + CHECK_CHUNK] for column in (names, lattices, fracs, zs))
        for k in range(0, len(names), CHECK_CHUNK)
    ]
    if processes <= 1 or len(parts) < 2:
        return [row for part in parts for row in pm.check_crystals(*part, fingerprints)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(pm.check_crystals, *part, fingerprints) for part in parts]
        return [row for future in futures for row in future.result()]


def reference(
    dataset: str, split: str, coverage: bool = True, processes: int = 1
) -> tuple[list, tuple | None]:
    """The reference split as pymatgen Structures and their (structure, composition)
    fingerprints (None without ``coverage``), on ``processes`` processes."""
    records = load_dataset(dataset).split_set(split).to_data_list()
    structures = [
        cc.to_structure(d.lattice.numpy().reshape(3, 3), d.frac.numpy(), d.z.numpy())
        for d in records
    ]
    structures = [s for s in structures if s is not None]
    if not coverage:
        return structures, None
    code = hashlib.sha256(cfp.fingerprint_code()).hexdigest()[:8]  # an edit recomputes
    cache = ldsm_home() / "benchmarks" / f"reference-{dataset}-{split}-{code}.npz"
    if cache.exists():
        data = np.load(cache)
        return structures, (list(data["struct"]), list(data["comp"]))
    print(f"fingerprinting {len(structures)} {dataset} {split} crystals (cached after)", flush=True)
    struct, comp = fingerprints_in_parallel(structures, processes)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, struct=np.asarray(struct), comp=np.asarray(comp))
    return structures, (struct, comp)


def evaluate(
    run: Path,
    sampler: SamplerConfig,
    n: int,
    batch: int,
    seed: int,
    ref: list,
    ref_fps,
    cutoffs: dict,
    matching: bool = True,
    processes: int = 1,
) -> dict:
    trained = load_trained(run / "checkpoints" / "last.pt")
    sizes = np.array(sorted(trained.num_atoms))
    freq = np.array([trained.num_atoms[s] for s in sizes], dtype=float)
    counts = torch.as_tensor(np.random.default_rng(seed).choice(sizes, size=n, p=freq / freq.sum()))
    gen = torch.Generator().manual_seed(seed)
    crystals, seconds, used = [], 0.0, 0
    for start in range(0, n, batch):
        started = time.perf_counter()
        chunk, used = trained.recipe.sample(
            trained.model, counts[start : start + batch], sampler, gen, f"s{start}"
        )
        seconds += time.perf_counter() - started
        crystals += chunk
    rows = checked(
        [c.name for c in crystals],
        [c.lattice.numpy().reshape(3, 3).astype(np.float64) for c in crystals],
        [c.frac.numpy().astype(np.float64) for c in crystals],
        [c.z.numpy() for c in crystals],
        ref_fps is not None,
        processes,
    )
    metrics = pm.crystal_set_metrics(rows, ref, ref_fps, cutoffs, matching=matching)
    if ref_fps is not None:
        metrics["coverage_by_n"] = coverage_by_n(rows, ref_fps, cutoffs)
    metrics.update(
        nfe=used,
        corrector=sampler.corrector,
        noise_scale=sampler.noise_scale,
        seconds_per_crystal=seconds / n,
        n=n,
    )
    return metrics


def coverage_by_n(rows: list[dict], ref_fps: tuple, cutoffs: dict) -> dict[str, list[float]]:
    """COV-R and COV-P (:func:`pipeline.crystal_fingerprints.coverage`) of the first ``k`` rows for
    every ``k`` of :data:`COVERAGE_PREFIXES` below ``len(rows)``: ``{str(k): [recall,
    precision]}``. The rows are drawn independently, so a prefix is a sample of ``k`` crystals:
    this is how recall grows with the number of samples at the same model and sampler."""
    out = {}
    for k in (k for k in COVERAGE_PREFIXES if k < len(rows)):
        out[str(k)] = list(
            cfp.coverage(
                [r.get("struct_fp") for r in rows[:k]],
                [r.get("comp_fp") for r in rows[:k]],
                *ref_fps,
                cutoffs["struc"],
                cutoffs["comp"],
            )
        )
    return out


def data_evaluate(
    dataset: str, split: str, ref: list, ref_fps, cutoffs: dict, processes: int = 1
) -> dict:
    """The cells of ``split`` (the training data) scored as if generated: the ceiling of the
    distribution metrics (coverage, Wasserstein distances) a model of that split can reach."""
    records = load_dataset(dataset).split_set(split).to_data_list()
    rows = checked(
        [f"{split}-{k}" for k in range(len(records))],
        [d.lattice.numpy().reshape(3, 3).astype(np.float64) for d in records],
        [d.frac.numpy().astype(np.float64) for d in records],
        [d.z.numpy() for d in records],
        ref_fps is not None,
        processes,
    )
    return pm.crystal_set_metrics(rows, ref, ref_fps, cutoffs, matching=False)


def csp_evaluate(
    run: Path, sampler: SamplerConfig, n: int, batch: int, seed: int, split: str
) -> dict:
    """Match rate and RMSE of one prediction per composition of the first ``n`` cells of
    ``split`` (module docstring), and the seconds per structure."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    trained = load_trained(run / "checkpoints" / "last.pt")
    dataset = trained.info["dataset"]
    truth = load_dataset(dataset).split_set(split).to_data_list()[:n]
    gen = torch.Generator().manual_seed(seed)
    predicted, seconds = [], 0.0
    for start in range(0, len(truth), batch):
        cells = truth[start : start + batch]
        started = time.perf_counter()
        chunk, used = trained.recipe.sample(
            trained.model,
            torch.tensor([len(d.z) for d in cells]),
            sampler,
            gen,
            f"s{start}",
            types=torch.cat([d.z for d in cells]),
        )
        seconds += time.perf_counter() - started
        predicted += chunk
    matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    rms = []
    for pred, true in zip(predicted, truth, strict=True):
        arrays = [pred.lattice.numpy().reshape(3, 3).astype(np.float64), pred.frac.numpy()]
        if not cc.structural_validity(*arrays, pred.z.numpy()).ok:
            continue
        a = cc.to_structure(*arrays, pred.z.numpy())
        b = cc.to_structure(true.lattice.numpy().reshape(3, 3), true.frac.numpy(), true.z.numpy())
        found = matcher.get_rms_dist(a, b) if a is not None and b is not None else None
        if found is not None:
            rms.append(float(found[0]))
    return {
        "nfe": used,
        "corrector": sampler.corrector,
        "noise_scale": sampler.noise_scale,
        "n": len(truth),
        "match_rate": len(rms) / len(truth),
        "rmse": float(np.mean(rms)) if rms else None,
        "seconds_per_crystal": seconds / len(truth),
    }


def csp_table(runs: list[Path], results: Path, dataset: str) -> str:
    """The training table and the CSP table with the published anchors."""
    lines = [
        "| method | NFE | corrector | n | match rate % | RMSE | s / crystal |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        found = [json.loads(p.read_text()) for p in results.glob(f"{run.name}-csp-nfe*.json")]
        for m in sorted(found, key=_order):
            lines.append(
                f"| {_method(run, m)} | {m['nfe']} | {m.get('corrector', 0.0):g} | {m['n']} | "
                f"{_pct(m['match_rate'])} | "
                f"{_num(m['rmse'])} | {m['seconds_per_crystal']:.4f} |"
            )
    for name, (rate, rmse) in CSP_ANCHORS.get(dataset, {}).items():
        lines.append(f"| {name} (published) | 1000 | | all | {rate} | {_num(rmse)} | |")
    return training_table(runs, "CSPNet") + "\n\n" + "\n".join(lines)


def _suffix(corrector: float, noise_scale: float = 1.0) -> str:
    """Result files of corrected samples carry the step, those sampled below the learnt law's
    noise their noise scale (files without either predate them)."""
    noise = f"-noise{noise_scale:g}" if noise_scale != 1.0 else ""
    return (f"-pc{corrector:g}" if corrector else "") + noise


def _method(run: Path, m: dict) -> str:
    """The run's name, with the noise scale where it is not the learnt law's 1."""
    scale = m.get("noise_scale", 1.0)
    return run.name + (f" (noise scale {scale:g})" if scale != 1.0 else "")


def _order(m: dict) -> tuple:
    return m["nfe"], m.get("corrector", 0.0), -m.get("noise_scale", 1.0)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(runs: list[Path], results: Path, dataset: str, data: dict | None = None) -> str:
    """The training table and the sample-quality table (every result present, by run and NFE;
    ``data``: the row of :func:`data_evaluate` under its ``split`` key)."""
    lines = [
        "| method | NFE | corrector | n | struct. valid | comp. valid | COV-R | COV-P | W density "
        "| W #elements | unique | novel | s / crystal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        found = [json.loads(p.read_text()) for p in results.glob(f"{run.name}-nfe*.json")]
        for m in sorted(found, key=_order):
            lines.append(
                f"| {_method(run, m)} | {m['nfe']} | {m.get('corrector', 0.0):g} | {m['n']} | "
                f"{_pct(m['structural_validity'])} | "
                f"{_pct(m['compositional_validity'])} | {_pct(m['coverage_recall'])} | "
                f"{_pct(m['coverage_precision'])} | {_num(m['wdist_density'])} | "
                f"{_num(m['wdist_num_elements'])} | {_pct(m['uniqueness'])} | "
                f"{_pct(m['novelty'])} | {m['seconds_per_crystal']:.4f} |"
            )
    if data is not None:
        m = data
        lines.append(
            f"| {m['split']}.csv cells (the training data) | | | {m['n']} | "
            f"{_pct(m['structural_validity'])} | {_pct(m['compositional_validity'])} | "
            f"{_pct(m['coverage_recall'])} | {_pct(m['coverage_precision'])} | "
            f"{_num(m['wdist_density'])} | {_num(m['wdist_num_elements'])} | | | |"
        )
    for name, (sv, cv, cr, cp, wd, we) in ANCHORS.get(dataset, {}).items():
        lines.append(
            f"| {name} (published) | 1000 | | 10000 | {sv} | {cv} | {cr} | {cp} | {wd} | {we} "
            "| | | |"
        )
    return training_table(runs, "CSPNet") + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--nfe", nargs="+", type=int, default=[100])
    parser.add_argument("--n", type=int, default=1000, help="crystals per (run, NFE)")
    parser.add_argument("--batch", type=int, default=500, help="crystals sampled together")
    parser.add_argument("--split", default="test", help="reference split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csp", action="store_true", help="structure-prediction runs (module doc)")
    parser.add_argument(
        "--corrector",
        type=float,
        default=CRYSTAL_CORRECTOR,
        help="Langevin corrector step / sigma_t^2 (pipeline.samplers.SamplerConfig; 0: none)",
    )
    parser.add_argument(
        "--no-coverage", action="store_true", help="skip CrystalNN fingerprints and coverage"
    )
    parser.add_argument(
        "--no-matching",
        action="store_true",
        help="skip uniqueness and novelty (StructureMatcher fits, the slowest metrics)",
    )
    parser.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        help="the sampler's noise scale (pipeline.samplers.SamplerConfig); 1, the learnt law, is "
        "what the published rows sample",
    )
    parser.add_argument(
        "--data-row",
        metavar="SPLIT",
        help="also score the cells of SPLIT (the training split, val) as if generated: the "
        "ceiling of coverage and the Wasserstein distances",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="processes for the checks and fingerprints (0: every core)",
    )
    parser.add_argument("--notes", default="", help="a Markdown file or paragraph under the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    processes = args.processes or os.cpu_count() or 1
    datasets = {json.loads((r / "config.json").read_text())["dataset"] for r in args.runs}
    if len(datasets) != 1:
        parser.error(f"the runs train on different data sets {sorted(datasets)}: one at a time")
    (dataset,) = datasets
    cutoffs = cc.COV_CUTOFFS[dataset.replace("-", "_")]
    args.results.mkdir(parents=True, exist_ok=True)
    if args.csp:
        return csp_main(args, dataset)
    ref = None
    for run in args.runs:
        for nfe in args.nfe:
            suffix = _suffix(args.corrector, args.noise_scale)
            path = args.results / f"{run.name}-nfe{nfe}{suffix}.json"
            if path.exists():
                continue
            ref = ref or reference(dataset, args.split, not args.no_coverage, processes)
            print(f"{run.name}: sampling {args.n} crystals at {nfe} NFE", flush=True)
            sampler = SamplerConfig(nfe=nfe, corrector=args.corrector, noise_scale=args.noise_scale)
            metrics = evaluate(
                run,
                sampler,
                args.n,
                args.batch,
                args.seed,
                *ref,
                cutoffs,
                not args.no_matching,
                processes,
            )
            path.write_text(json.dumps(metrics, indent=2) + "\n")
            print(json.dumps(metrics), flush=True)
    data = None
    if args.data_row:
        path = args.results / f"data-{dataset}-{args.data_row}.json"
        if not path.exists():
            ref = ref or reference(dataset, args.split, not args.no_coverage, processes)
            print(f"scoring the {dataset} {args.data_row} cells as samples", flush=True)
            scored = data_evaluate(dataset, args.data_row, *ref, cutoffs, processes)
            path.write_text(json.dumps(scored | {"split": args.data_row}, indent=2) + "\n")
        data = json.loads(path.read_text())
    body = table(args.runs, args.results, dataset, data)
    if args.notes:
        notes = Path(args.notes)
        body += "\n\n" + (notes.read_text() if notes.exists() else args.notes)
    print(body)
    command = (
        "python -m benchmarks.quality.crystals --runs "
        + " ".join(str(r) for r in args.runs)
        + f" --nfe {' '.join(map(str, args.nfe))} --n {args.n} --corrector {args.corrector:g}"
        + f" --noise-scale {args.noise_scale:g}"
        + (" --no-matching" if args.no_matching else "")
        + (" --no-coverage" if args.no_coverage else "")
        + (f" --data-row {args.data_row}" if args.data_row else "")
    )
    write_section(
        f"quality-{dataset}",
        f"Quality: {dataset} de novo generation, linear vs physical drift",
        command,
        body,
    )
    return 0


def csp_main(args: argparse.Namespace, dataset: str) -> int:
    """The ``--csp`` branch of :func:`main`: evaluate, tabulate, write section csp-<dataset>."""
    for run in args.runs:
        for nfe in args.nfe:
            suffix = _suffix(args.corrector, args.noise_scale)
            path = args.results / f"{run.name}-csp-nfe{nfe}{suffix}.json"
            if path.exists():
                continue
            print(f"{run.name}: predicting {args.n} {dataset} structures at {nfe} NFE", flush=True)
            sampler = SamplerConfig(nfe=nfe, corrector=args.corrector, noise_scale=args.noise_scale)
            metrics = csp_evaluate(run, sampler, args.n, args.batch, args.seed, args.split)
            path.write_text(json.dumps(metrics, indent=2) + "\n")
            print(json.dumps(metrics), flush=True)
    body = csp_table(args.runs, args.results, dataset)
    if args.notes:
        notes = Path(args.notes)
        body += "\n\n" + (notes.read_text() if notes.exists() else args.notes)
    print(body)
    command = (
        "python -m benchmarks.quality.crystals --csp --runs "
        + " ".join(str(r) for r in args.runs)
        + f" --nfe {' '.join(map(str, args.nfe))} --n {args.n} --corrector {args.corrector:g}"
        + f" --noise-scale {args.noise_scale:g}"
    )
    write_section(
        f"csp-{dataset}",
        f"Structure prediction: {dataset}, one sample per composition",
        command,
        body,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ranking and filtering on properties (pipeline.ranking) and RDKit's properties
(pipeline.properties): analytic answers, refusals, counts and order."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import RDConfig

from pipeline.properties import molecule_properties
from pipeline.ranking import ExpressionError, apply_filters, parse_expression, parse_filter, rank


def test_expressions_give_their_analytic_values():
    row = {"kind": "molecule", "qed": 0.8, "sa": 3.0, "xtb_gap": 5.0, "n_atoms": 9}
    assert parse_expression("-xtb_gap").value(row) == -5.0
    assert parse_expression("qed - 0.1*sa").value(row) == pytest.approx(0.5)
    assert parse_expression("(qed + 1) / (sa - 1) * -2").value(row) == pytest.approx(-1.8)
    assert parse_expression("n_atoms / 3 - -1").value(row) == pytest.approx(4.0)
    assert parse_expression(" 2 ").value(row) == 2.0
    # A property the row lacks, or one that is None, or a division by zero: no value.
    assert parse_expression("xtb_dipole").value(row) is None
    assert parse_expression("qed").value({**row, "qed": None}) is None
    assert parse_expression("qed / (sa - 3)").value(row) is None
    assert parse_expression("n_atoms * qed").value({"n_atoms": np.int64(3), "qed": 0.5}) == 1.5
    assert parse_expression("qed").value({"qed": True}) is None
    assert parse_expression("qed - 0.1*sa").names == {"qed", "sa"}
    assert parse_expression("qed").kind == "molecule"
    assert parse_expression("-chgnet_energy_per_atom").kind == "crystal"
    assert parse_expression("n_atoms").kind is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('true')", "is not allowed"),
        ("qed ** 2", "'qed ** 2' in 'qed ** 2' is not allowed"),
        ("qed.real", "is not allowed"),
        ("[qed][0]", "is not allowed"),
        ("qed if sa else 1", "is not allowed"),
        ("+qed", "is not allowed"),
        ("'qed'", "is not a number"),
        ("True", "is not a number"),
        ("foo + 1", "unknown column 'foo' in 'foo + 1'"),
        ("__builtins__", "unknown column '__builtins__'"),
        ("qed -", "is not an expression"),
        ("qed + density", "mixes molecule and crystal columns"),
        ("-" * 600 + "qed", "is longer than 500 characters"),
    ],
)
def test_anything_but_names_numbers_and_arithmetic_is_refused_in_one_line(text, message):
    with pytest.raises(ExpressionError, match=None) as err:
        parse_expression(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_filters_parse_one_comparison_only():
    f = parse_filter("qed >= 0.5")
    assert (f.left.text, f.op, f.right.text, f.kind) == ("qed", ">=", "0.5", "molecule")
    assert f.keeps({"qed": 0.5}) and not f.keeps({"qed": 0.49}) and not f.keeps({})
    assert parse_filter("0.1 * sa < qed").keeps({"qed": 0.5, "sa": 4.0})
    for text in ("qed", "qed == 0.5", "0 < qed < 1", "qed >= foo", "qed >= density"):
        with pytest.raises(ExpressionError):
            parse_filter(text)


def _rows() -> list[dict]:
    """Four passing molecules (one with no xTB gap), a failing one and a passing crystal."""
    return [
        {"kind": "molecule", "name": "a", "passed": True, "qed": 0.9, "sa": 2.0, "xtb_gap": 4.0},
        {"kind": "molecule", "name": "b", "passed": True, "qed": 0.4, "sa": 2.0, "xtb_gap": 6.0},
        {"kind": "molecule", "name": "c", "passed": True, "qed": 0.75, "sa": 5.0, "xtb_gap": None},
        {"kind": "molecule", "name": "d", "passed": True, "qed": 0.6, "sa": 3.0, "xtb_gap": 5.0},
        {"kind": "molecule", "name": "e", "passed": False, "qed": 0.95, "sa": 1.0, "xtb_gap": 9.0},
        {"kind": "crystal", "name": "x", "passed": True, "chgnet_energy_per_atom": -5.0},
    ]


def test_filters_count_what_each_removed_in_order_and_keep_other_kinds():
    rows = _rows()
    removed = apply_filters(rows, [parse_filter("qed>=0.5"), parse_filter("sa<=4")])
    # qed>=0.5 removes b; of a, c, d still passing, sa<=4 removes c. e was not passing: not
    # counted; the crystal has no qed but molecule filters do not apply to it.
    assert removed == {"qed>=0.5": 1, "sa<=4": 1}
    by = {r["name"]: r for r in rows}
    assert [n for n, r in by.items() if r["passed"]] == ["a", "d", "x"]
    assert (
        by["b"]["filter_reason"] == "fails qed>=0.5" and by["c"]["filter_reason"] == "fails sa<=4"
    )
    assert by["a"]["filter"] and by["a"]["filter_reason"] == "ok"
    assert "filter" not in by["e"]  # not passing its checks: no filter applied to it
    rows = _rows()
    assert apply_filters(rows, [parse_filter("xtb_gap > 4.5")]) == {"xtb_gap > 4.5": 2}
    assert rows[2]["filter_reason"] == "no xtb_gap for xtb_gap > 4.5"
    assert apply_filters(_rows(), []) == {}


def test_rank_by_a_score_highest_first_passing_first_missing_last():
    rows = _rows()
    molecules = rank([r for r in rows if r["kind"] == "molecule"], parse_expression("-xtb_gap"))
    # passing by -gap: a (-4) > d (-5) > b (-6), then c (no gap); e fails: last despite its gap.
    assert [r["name"] for r in molecules] == ["a", "d", "b", "c", "e"]
    assert [r["rank"] for r in molecules] == [1, 2, 3, 4, 5]
    assert molecules[0]["score"] == -4.0 and molecules[3]["score"] is None
    by_qed = rank([r for r in rows if r["kind"] == "molecule"], parse_expression("qed - 0.1*sa"))
    assert [r["name"] for r in by_qed] == ["a", "d", "c", "b", "e"]
    crystals = rank([r for r in rows if r["kind"] == "crystal"], parse_expression("qed"))
    assert crystals[0]["rank"] == 1 and crystals[0]["score"] is None  # qed is no crystal's


def test_default_rank_is_passing_then_checks_then_lowest_relaxation_energy():
    rows = [
        {"name": "p2", "passed": True, "valid": True, "xtb_relaxation_ev": 0.3},
        {"name": "f", "passed": False, "valid": True, "stable": True},
        {"name": "p1", "passed": True, "valid": True, "xtb_relaxation_ev": 0.1},
        {"name": "p3", "passed": True, "valid": True, "stable": True},
    ]
    assert [r["name"] for r in rank(rows)] == ["p3", "p1", "p2", "f"]
    assert "score" not in rows[0]


def _sa_reference() -> list[tuple[str, float]]:
    """SMILES and SA scores that ship with RDKit's SA scorer (Contrib/SA_Score/data)."""
    path = Path(RDConfig.RDContribDir) / "SA_Score" / "data" / "zim.100.txt"
    with open(path) as f:
        return [(r["smiles"], float(r["sa_score"])) for r in csv.DictReader(f, delimiter="\t")]


def test_rdkit_properties_match_the_published_and_known_values():
    reference = _sa_reference()[:10]
    for smiles, sa in reference:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))  # explicit H, as the screen's molecules
        assert molecule_properties(mol)["sa"] == pytest.approx(sa, abs=1e-3)
    # Benzene: QED 0.4427 (Bickerton et al.'s weights, RDKit), Crippen logP 1.6866 (6 x 0.1581
    # aromatic C + 6 x 0.123 aromatic H); methane: logP 0.6361 (0.1441 + 4 x 0.123).
    benzene = molecule_properties(Chem.AddHs(Chem.MolFromSmiles("c1ccccc1")))
    assert benzene["qed"] == pytest.approx(0.4427, abs=1e-4)
    assert benzene["logp"] == pytest.approx(1.6866, abs=1e-4)
    assert molecule_properties(Chem.MolFromSmiles("C"))["logp"] == pytest.approx(0.6361, abs=1e-4)
    assert molecule_properties(None) == {"qed": None, "logp": None, "sa": None}

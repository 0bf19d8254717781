"""Crystal design runs: the console summary names the crystal metrics (issue 15)."""

from __future__ import annotations

from flows.design import CRYSTAL_SUMMARY, MOLECULE_SUMMARY, console_summary


def test_console_summary_prints_the_metrics_of_the_kind_generated():
    crystals = {k: 0.5 for k in CRYSTAL_SUMMARY} | {"n": 50}
    metrics = {"molecules": {"n": 0, "validity": None}, "crystals": crystals}
    summary = console_summary("runs/perov", metrics)
    assert summary == {"out": "runs/perov", "kind": "crystals", "n": 50, **crystals}
    molecules = {k: 0.25 for k in MOLECULE_SUMMARY} | {"n": 200}
    summary = console_summary("runs/qm9", {"molecules": molecules, "crystals": {"n": 0}})
    assert summary["kind"] == "molecules" and summary["n"] == 200
    assert all(summary[k] == 0.25 for k in MOLECULE_SUMMARY)

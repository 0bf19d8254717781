import re

from flows.cli import main


def test_demo_trains_and_reports_the_score_error(capsys):
    assert main(["demo", "--steps", "60", "--mode", "taylor2"]) == 0
    out = capsys.readouterr().out
    before, after = map(float, re.search(r"q_t\|\^2: ([\d.]+) -> ([\d.]+)", out).groups())
    assert after < before  # even 60 steps must reduce the error of the untrained network
    assert "training time" in out

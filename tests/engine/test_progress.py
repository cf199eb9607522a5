"""`protect` reports each stage it finishes (load, calibrate, plan, encrypt weights, self-check)
with its elapsed time on stderr, and stays quiet when asked to."""
from __future__ import annotations

import re

from protected_nn import zoo
from protected_nn.api import ProtectOptions, protect

STAGES = ["load", "calibrate", "plan", "encrypt weights", "self-check"]


def test_protect_prints_one_line_per_stage(capsys):
    protect(zoo.tenseal_cnn(0), options=ProtectOptions(check_samples=1))
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("protect: ")]
    assert [re.match(r"protect: (.+?)\s+[\d.]+ s", l).group(1) for l in lines] == STAGES
    totals = [float(re.search(r"total\s+([\d.]+) s", l).group(1)) for l in lines]
    assert totals == sorted(totals)


def test_protect_progress_can_be_silenced(capsys):
    protect(zoo.tenseal_cnn(0), options=ProtectOptions(check_samples=1, progress=False))
    assert "protect: " not in capsys.readouterr().err

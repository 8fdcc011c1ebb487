"""`gpu-cnmf demo`: the whole pipeline on its synthetic movies, scored
against their ground truth as the user sees it printed."""
import re

import pytest

from gpu_cnmf.cli import main


def _figures(text):
    rows = {}
    for name, key in (("shift RMS error", "shift"), ("ROI F1, accepted components", "f1"),
                      ("median trace correlation", "trace_r")):
        m = re.search(re.escape(name) + r"[^\n]*?\s([0-9.]+)\s*$", text, re.M)
        assert m, f"demo output has no '{name}' row:\n{text}"
        rows[key] = float(m.group(1))
    return rows


@pytest.mark.parametrize("one_photon", [False, True], ids=["2p", "1p"])
def test_small_demo_is_accurate(capsys, tmp_path, one_photon):
    argv = ["demo", "--small", "--out", str(tmp_path)] + (["--1p"] if one_photon else [])
    assert main(argv) == 0
    got = _figures(capsys.readouterr().out)
    # 1p registration on the vessel shadows (gSig_filt), CNMF-E with the
    # ring background; 2p rigid registration and CNMF on patches
    assert got["shift"] <= 0.2, got
    assert got["f1"] >= 0.9, got
    assert got["trace_r"] >= 0.9, got

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


@pytest.mark.parametrize("flags, min_f1", [([], 0.9), (["--1p"], 0.9),
                                            (["--1p", "--ring-cnn"], 0.85)],
                         ids=["2p", "1p", "1p-ring-cnn"])
def test_small_demo_is_accurate(capsys, tmp_path, flags, min_f1):
    assert main(["demo", "--small", "--out", str(tmp_path)] + flags) == 0
    got = _figures(capsys.readouterr().out)
    # 2p rigid registration and CNMF on patches; 1p registration on the
    # vessel shadows (gSig_filt), then CNMF-E with the ring background, or
    # the Ring-CNN background removed and CNMF as for 2p data
    assert got["shift"] <= 0.2, got
    assert got["f1"] >= min_f1, got
    assert got["trace_r"] >= 0.9, got


def test_ring_cnn_demo_needs_1p(capsys):
    assert main(["demo", "--small", "--ring-cnn"]) == 2
    err = capsys.readouterr().err
    assert "--ring-cnn" in err and "--1p" in err and "Traceback" not in err

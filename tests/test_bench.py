"""The bench command: every stage listed within a tiny budget, positive
figures, clean user errors, the projection's arithmetic, comparing runs."""
import json

import pytest
import torch

from gpu_cnmf import cli
from gpu_cnmf.bench import report, run_bench
from gpu_cnmf.bench.probes import disk_speed
from gpu_cnmf.bench.stages import CASE_NAMES, CASES, Passes

OK_SKIPS = ("skipped: budget", "skipped: needs cnmf_fit")


def _check_rows(doc, devices, names=CASE_NAMES):
    rows = {(r["stage"], r["device"]): r for r in doc["stages"]}
    for dev in devices:
        assert [r["stage"] for r in doc["stages"] if r["device"] == dev] == names
    n_ok = 0
    for r in doc["stages"]:
        if r["device"] not in devices:
            continue
        if r["status"] == "ok":
            n_ok += 1
            for key in ("seconds", "rate", "bytes", "bytes_per_s", "fraction_memory_bw"):
                assert r[key] > 0, (r["stage"], key, r[key])
            assert r["size"] >= 1
        else:
            assert r["status"] in OK_SKIPS, r["status"]
    return rows, n_ok


def test_tiny_budget_lists_every_stage(tmp_path):
    """--device both on a tiny budget: the CPU column, 'skipped: budget'
    where time ran out, CUDA marked absent when it is; JSON and table written."""
    t_budget = 8.0
    doc = run_bench(device="both", quick=True, budget=t_budget, out=str(tmp_path / "b"),
                    dims=(64, 64), run_tests=False, log=lambda m: None)
    assert doc["elapsed_s"] < t_budget + 3.0
    on_disk = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert on_disk["stages"] == json.loads(json.dumps(doc["stages"]))
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "| rigid registration | cpu |" in md
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, n_ok = _check_rows(on_disk, devices)
    assert {"host_memory", "disk_read", "disk_write"} <= set(on_disk["probes"])
    if not torch.cuda.is_available():
        assert "CUDA is absent" in on_disk["note"]
        assert all(rows[(s, "cuda")]["status"] == "not run: no CUDA" for s in CASE_NAMES)
        assert on_disk["goals"][0]["verdict"] == "not measured (no GPU run)"
    assert not any(p.name.startswith(".bench_work") for p in (tmp_path / "b").iterdir())


def test_one_stage_gets_the_budget_and_grows(tmp_path):
    """A cheap stage alone: measured, positive figures, sized past its
    calibration run."""
    doc = run_bench(device="cpu", quick=True, budget=6.0, out=str(tmp_path), dims=(64, 64),
                    run_tests=False, stages="summary", log=lambda m: None)
    assert [r["stage"] for r in doc["stages"]] == ["summary"]
    rows, n_ok = _check_rows(doc, ["cpu"], ["summary"])
    assert n_ok == 1
    row = rows[("summary", "cpu")]
    assert row["size"] > row["calibration"]["size"]
    assert 0 < row["fraction_memory_bw"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cli_device_cuda_without_gpu_is_one_line(capsys, tmp_path):
    rc = cli.main(["bench", "--device", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--device cuda" in err[0]


@pytest.mark.parametrize("argv, word", [(["--budget", "0"], "--budget"),
                                        (["--stages", "rigid,warp"], "--stages"),
                                        (["--compare", "nope.json", "nope.json"], "--compare")])
def test_cli_bad_input_is_one_line(capsys, tmp_path, argv, word):
    rc = cli.main(["bench", "--device", "cpu", "--out", str(tmp_path)] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and word in err[0]


def _doc(cpu_s, cuda_s=None):
    """A bench document with the rigid and pipeline stages measured."""
    stages = []
    for dev, sec in (("cpu", cpu_s), ("cuda", cuda_s)):
        if sec is None:
            continue
        for name in ("rigid", "pipeline"):
            stages.append({"stage": name, "label": name, "device": dev, "status": "ok",
                           "unit": "frames", "size": 1000, "seconds": sec})
    probes = {"host_memory": {"bytes_per_s": 10e9}, "disk_read": {"bytes_per_s": 20e9},
              "disk_write": {"bytes_per_s": 10e9}}
    if cuda_s is not None:
        probes.update(device_memory={"bytes_per_s": 2e12}, pcie={"bytes_per_s": 25e9})
    return {"devices": ["cuda", "cpu"] if cuda_s else ["cpu"], "dims": [512, 512], "git": "abc",
            "device_names": {"cpu": "CPU", **({"cuda": "GPU"} if cuda_s else {})},
            "movie": {"frame_bytes": 512 * 512 * 4, "oasis_frames": 10_000},
            "machine": {"ram_bytes": 24 * 2**30}, "probes": probes, "stages": stages}


def test_projection_picks_the_binding_resource():
    doc = _doc(cpu_s=10.0, cuda_s=0.01)
    report.finish(doc, CASES)
    fb = 512 * 512 * 4 * report.HOUR_FRAMES
    cpu = doc["projection"]["cpu"]["stages"]["rigid"]
    assert cpu["compute_s"] == pytest.approx(10.0 / 1000 * report.HOUR_FRAMES)
    assert cpu["bound"] == "compute"
    # GPU: 1.08 s of compute and one disk read (5.7 s), but 2 passes over
    # 113 GB across PCIe at 25 GB/s
    gpu = doc["projection"]["cuda"]["stages"]["rigid"]
    assert gpu["bound"] == "PCIe"
    assert gpu["seconds"] == pytest.approx(2 * fb / 25e9)
    assert gpu["floors_s"]["disk"] == pytest.approx(fb / 20e9)
    # the movie outgrows RAM: every file read of the pipeline comes from disk
    pipe = next(c for c in CASES if c.name == "pipeline").passes
    e2e = doc["projection"]["cuda"]["end_to_end"]
    assert e2e["bound"] == "disk"
    assert e2e["seconds"] == pytest.approx(pipe.disk_read * fb / 20e9 + pipe.disk_write * fb / 10e9)
    assert doc["ratios"]["rigid"] == pytest.approx(1000.0)
    goals = {g["goal"].split()[0]: g for g in doc["goals"]}
    assert goals["rigid"]["verdict"] == "met"        # 100,000 frames/s
    assert goals["one-hour"]["verdict"] == "met"          # 62 s
    assert goals["OASIS"]["verdict"] == "not measured"
    row = next(r for r in doc["stages"] if r["stage"] == "rigid" and r["device"] == "cpu")
    # 2 passes of 1000 frames in 10 s against 10 GB/s
    assert row["fraction_memory_bw"] == pytest.approx(2 * 1000 * 512 * 512 * 4 / 10e9 / 10.0)


def test_compare_two_runs(tmp_path):
    a, b = _doc(cpu_s=10.0), _doc(cpu_s=5.0)
    for d, name in ((a, "a"), (b, "b")):
        report.finish(d, CASES)
        (tmp_path / name).mkdir()
        report.write(d, tmp_path / name)
    table = report.compare(tmp_path / "a" / "bench.json", tmp_path / "b" / "bench.json")
    assert "| rigid | cpu | 100 frames/s | 200 frames/s | 2.00 |" in table


def test_disk_probe(tmp_path):
    d = disk_speed(str(tmp_path), 16 << 20)
    assert d["read"]["bytes_per_s"] > 0 and d["write"]["bytes_per_s"] > 0
    assert d["read"]["bytes"] == 16 << 20 and d["read"]["method"]
    assert list(tmp_path.iterdir()) == []


def test_passes_declared_for_every_stage():
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) == 11
    for c in CASES:
        assert isinstance(c.passes, Passes) and c.passes.memory > 0


@pytest.mark.gpu
def test_gpu_column(tmp_path):
    doc = run_bench(device="cuda", quick=True, budget=40, out=str(tmp_path),
                    dims=(128, 128), run_tests=False, stages="rigid,oasis,summary",
                    log=lambda m: None)
    rows = {r["stage"]: r for r in doc["stages"]}
    assert rows["rigid"]["status"] == "ok" and rows["rigid"]["rate"] > 0
    assert rows["rigid"]["fraction_pcie"] > 0
    assert "device_memory" in doc["probes"] and "pcie" in doc["probes"]

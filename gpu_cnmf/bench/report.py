"""The bench's results: derived figures, the one-hour projection, the goals,
the Markdown table, the JSON file, and the comparison of two runs.

How bytes are counted
---------------------
A stage's data is its movie (``n x d1 x d2`` float32; for OASIS the
``traces x frames`` float32 matrix). Each case declares how many passes over
that data it makes through memory, across PCIe (GPU runs), and from or to
files (:class:`gpu_cnmf.bench.stages.Passes`). ``bytes = passes x data``,
a lower bound (patch overlaps and iterative re-reads are not counted).
"Fraction of a limit" is the time that resource alone would need for those
bytes at its measured speed, divided by the stage's measured time: 100 %
means the stage runs at that resource's speed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

HOUR_FRAMES = 108_000      # one hour at 30 Hz
GOALS = (
    ("rigid", "rate", 20_000.0, "rigid registration >= 20,000 frames/s on one H100"),
    ("pw_rigid", "rate", 5_000.0, "piecewise-rigid registration >= 5,000 frames/s on one H100"),
    ("oasis", "ratio", 50.0, "OASIS >= 50x its CPU twin"),
    ("end_to_end", "hour", 300.0, "one-hour 512x512 recording end to end in <= 5 minutes"),
)


def absent_row(case, device, status):
    return {"stage": case.name, "label": case.label, "device": device, "status": status,
            "unit": case.unit}


def _limits(doc, device):
    p = doc.get("probes", {})
    mem = p.get("device_memory" if device == "cuda" else "host_memory", {}).get("bytes_per_s")
    pcie = p.get("pcie", {}).get("bytes_per_s") if device == "cuda" else None
    return mem, pcie, p.get("disk_read", {}).get("bytes_per_s"), \
        p.get("disk_write", {}).get("bytes_per_s")


def _derive(row, case, doc):
    """Rate, bytes and fractions of the limits for one measured row."""
    mv = doc["movie"]
    if case.unit == "traces":
        work = row["size"] * mv["oasis_frames"]
        row["rate_unit"] = "traces x frames/s"
        data = 4 * work
    else:
        work = row["size"]
        row["rate_unit"] = "frames/s"
        data = row["size"] * mv["frame_bytes"]
    sec = max(row["seconds"], 1e-9)
    row["rate"] = work / sec
    ps = case.passes
    row["passes"] = {"memory": ps.memory, "pcie": ps.pcie if row["device"] == "cuda" else 0,
                     "disk_read": ps.disk_read, "disk_write": ps.disk_write}
    row["bytes"] = ps.memory * data
    row["bytes_per_s"] = row["bytes"] / sec
    mem, pcie, dr, dw = _limits(doc, row["device"])
    if mem:
        row["fraction_memory_bw"] = ps.memory * data / mem / sec
    if pcie and row["device"] == "cuda":
        row["fraction_pcie"] = ps.pcie * data / pcie / sec
    if dr and dw and (ps.disk_read or ps.disk_write):
        row["fraction_disk"] = (ps.disk_read * data / dr + ps.disk_write * data / dw) / sec


def _floors(case, device, frames, frame_bytes, doc):
    """Seconds each resource alone needs for ``frames`` frames of this stage."""
    mem, pcie, dr, dw = _limits(doc, device)
    data = frames * frame_bytes
    ps = case.passes
    out = {}
    if mem:
        out["device memory bandwidth" if device == "cuda" else "host memory bandwidth"] = \
            ps.memory * data / mem
    if pcie:
        # the movie does not fit on the device: every pass streams across
        out["PCIe"] = ps.pcie * data / pcie
    if dr and dw:
        ram = doc.get("machine", {}).get("ram_bytes") or 0
        # the recording starts on disk; when it outgrows the page cache every
        # file read is a disk read, else only the first one
        reads = max(1.0, ps.disk_read) if data > 0.8 * ram else 1.0
        out["disk"] = reads * data / dr + ps.disk_write * data / dw
    return out


def _project(rows_by, case, device, frames, frame_bytes, doc):
    row = rows_by.get((case.name, device))
    if not row or row.get("status") != "ok" or case.unit != "frames":
        return None
    compute = row["seconds"] / row["size"] * frames
    floors = _floors(case, device, frames, frame_bytes, doc)
    cand = {"compute": compute, **floors}
    bound = max(cand, key=cand.get)
    return {"compute_s": compute, "floors_s": floors, "seconds": cand[bound], "bound": bound,
            "measured_frames": row["size"]}


def projection(doc, cases) -> dict:
    """One hour (108,000 frames) per device, from the measured per-frame costs.

    Each stage's time is the largest of its linear extrapolation (compute as
    measured) and the time its passes need at the measured memory, PCIe and
    disk speeds; the largest names what bounds it. End to end is the whole
    ``gpu-cnmf run`` when it was measured, else the sum of its stages.
    """
    rows_by = {(r["stage"], r["device"]): r for r in doc.get("stages", [])}
    fb = doc["movie"]["frame_bytes"]
    out = {}
    for device in doc["devices"]:
        per = {}
        for c in cases:
            pr = _project(rows_by, c, device, HOUR_FRAMES, fb, doc)
            if pr is not None:
                per[c.name] = pr
        e2e = None
        if "pipeline" in per:
            e2e = dict(per["pipeline"], source="whole gpu-cnmf run")
        else:
            parts = [c.name for c in cases if c.in_pipeline]
            if all(p in per for p in parts):
                e2e = {"seconds": sum(per[p]["seconds"] for p in parts),
                       "bound": ", ".join(sorted({per[p]["bound"] for p in parts})),
                       "source": "sum of " + ", ".join(parts)}
        out[device] = {"frames": HOUR_FRAMES, "dims": doc["dims"], "stages": per,
                       "end_to_end": e2e}
    return out


def ratios(doc) -> dict:
    by = {(r["stage"], r["device"]): r for r in doc.get("stages", []) if r.get("status") == "ok"}
    out = {}
    for (stage, dev), r in by.items():
        if dev == "cuda" and (stage, "cpu") in by:
            out[stage] = r["rate"] / by[(stage, "cpu")]["rate"]
    return out


def goals(doc) -> list[dict]:
    by = {(r["stage"], r["device"]): r for r in doc.get("stages", []) if r.get("status") == "ok"}
    gpu = doc.get("device_names", {}).get("cuda")
    out = []
    for stage, kind, target, text in GOALS:
        g = {"goal": text, "target": target, "device": gpu}
        if kind == "rate":
            r = by.get((stage, "cuda"))
            g["measured"] = r["rate"] if r else None
        elif kind == "ratio":
            g["measured"] = doc["ratios"].get(stage)
        else:
            e = doc["projection"].get("cuda", {}).get("end_to_end")
            g["measured"] = e["seconds"] if e else None
        if g["measured"] is None:
            g["verdict"] = "not measured (no GPU run)" if gpu is None else "not measured"
        else:
            ok = g["measured"] <= target if kind == "hour" else g["measured"] >= target
            g["verdict"] = "met" if ok else "not met"
        out.append(g)
    return out


def finish(doc, cases) -> None:
    """Add rates, fractions, ratios, projection and goals to ``doc``."""
    by_name = {c.name: c for c in cases}
    if "movie" not in doc:
        doc.setdefault("stages", [])
        doc["ratios"], doc["projection"], doc["goals"] = {}, {}, []
        return
    seen = {(r["stage"], r["device"]) for r in doc.get("stages", [])}
    for c in cases:                       # stages never reached: the budget ran out
        for d in doc["devices"]:
            if (c.name, d) not in seen:
                doc["stages"].append(absent_row(c, d, "skipped: budget"))
    for row in doc["stages"]:
        if row.get("status") == "ok":
            _derive(row, by_name[row["stage"]], doc)
    order = {c.name: i for i, c in enumerate(cases)}
    doc["stages"].sort(key=lambda r: (order[r["stage"]], r["device"] != "cuda"))
    doc["ratios"] = ratios(doc)
    doc["projection"] = projection(doc, cases)
    doc["goals"] = goals(doc)
    doc["bytes_counted"] = (__doc__.split("How bytes are counted")[1]
                            .split("\n", 2)[2].strip().replace("\n", " "))


# ----------------------------------------------------------------- output
def _gbs(x):
    return f"{x / 1e9:.2f}" if x else "-"


def _pct(x):
    return f"{100 * x:.1f} %" if x is not None else "-"


def _rate(r):
    return f"{r:,.0f}" if r >= 100 else f"{r:,.2f}"


def markdown(doc) -> str:
    m = doc.get("machine", {})
    lines = [f"## gpu_cnmf bench, {doc.get('started', '')}", "",
             f"- command: `{doc.get('command', '')}` (commit {doc.get('git') or 'unknown'})",
             f"- machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, "
             f"{(m.get('ram_bytes') or 0) / 2**30:.0f} GiB RAM, torch {m.get('torch', '?')}"
             + (f", load average {m['load_average_start'][0]:.1f} at the start"
                if m.get("load_average_start") else "")
             + (f"; GPU {m['gpu']} ({m['gpu_memory_bytes'] / 2**30:.0f} GiB), CUDA {m['cuda']}"
                if m.get("gpu") else ""),
             f"- devices: {', '.join(doc.get('device_names', {}).values())}; "
             f"budget {doc.get('budget_s', 0):.0f} s, took {doc.get('elapsed_s', 0):.0f} s; "
             f"movie {doc['dims'][0]}x{doc['dims'][1]} float32"
             + (", quick sizes" if doc.get("quick") else "")]
    if doc.get("note"):
        lines.append(f"- {doc['note']}")
    pt = doc.get("pytest_gpu", {})
    lines.append(f"- `pytest -m gpu`: {pt.get('status', '-')}"
                 + (f" ({pt['passed']} passed, {pt['failures']} failed, {pt['errors']} errors, "
                    f"{pt['skipped']} skipped)" if "tests" in pt else ""))
    lines += ["", "Limits (measured once):", ""]
    for k, v in doc.get("probes", {}).items():
        if isinstance(v, dict):
            lines.append(f"- {k.replace('_', ' ')}: {_gbs(v['bytes_per_s'])} GB/s ({v.get('method', '')})")
    lines += ["", "| stage | device | size | seconds | rate | GPU speed-up | GB/s moved | "
              "% memory BW | % PCIe | % disk | status |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    rat = doc.get("ratios", {})
    for r in doc.get("stages", []):
        if r.get("status") == "ok":
            size = (f"{r['size']} x {doc['movie']['oasis_frames']}" if r["unit"] == "traces"
                    else f"{r['size']} frames")
            ratio = f"{rat[r['stage']]:.1f}x" if r["device"] == "cuda" and r["stage"] in rat else ""
            note = f"ok; {r['note']}" if r.get("note") else "ok"
            lines.append(
                f"| {r['label']} | {r['device']} | {size} | {r['seconds']:.2f} | "
                f"{_rate(r['rate'])} {r['rate_unit']} | {ratio} | {_gbs(r['bytes_per_s'])} | "
                f"{_pct(r.get('fraction_memory_bw'))} | {_pct(r.get('fraction_pcie'))} | "
                f"{_pct(r.get('fraction_disk'))} | {note} |")
        else:
            lines.append(f"| {r['label']} | {r['device']} | | | | | | | | | {r['status']} |")
    if doc.get("bytes_counted"):
        lines += ["", "Bytes: " + doc["bytes_counted"]]
    proj = doc.get("projection", {})
    if proj:
        lines += ["", f"One hour of {doc['dims'][0]}x{doc['dims'][1]} at 30 Hz "
                      f"({HOUR_FRAMES:,} frames, "
                      f"{HOUR_FRAMES * doc['movie']['frame_bytes'] / 1e9:.0f} GB float32), "
                      "projected from the per-frame costs (linear) and the passes at the "
                      "measured limits:", "",
                  "| device | stage | projected | bound by | compute (extrapolated) | "
                  "memory floor | PCIe floor | disk floor |",
                  "|---|---|---:|---|---:|---:|---:|---:|"]
        for dev, pr in proj.items():
            for name, s in pr["stages"].items():
                f = s["floors_s"]
                mem = next((v for k, v in f.items() if "memory" in k), None)
                lines.append(f"| {dev} | {name} | {_dur(s['seconds'])} | {s['bound']} | "
                             f"{_dur(s['compute_s'])} | {_dur(mem)} | {_dur(f.get('PCIe'))} | "
                             f"{_dur(f.get('disk'))} |")
            e = pr.get("end_to_end")
            lines.append(f"| {dev} | **end to end** | **{_dur(e['seconds'])}** | {e['bound']} "
                         f"| {e['source']} | | | |" if e else
                         f"| {dev} | **end to end** | not measured | | | | | |")
    if doc.get("goals"):
        lines += ["", "| goal | measured | verdict |", "|---|---:|---|"]
        for g in doc["goals"]:
            meas = "-" if g["measured"] is None else (
                _dur(g["measured"]) if "minutes" in g["goal"] else
                f"{g['measured']:.1f}x" if "x its" in g["goal"] else f"{g['measured']:,.0f}")
            lines.append(f"| {g['goal']} | {meas} | {g['verdict']} |")
    if doc.get("stopped"):
        lines += ["", f"Stopped: {doc['stopped']}."]
    return "\n".join(lines) + "\n"


def _dur(s):
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(doc, out_dir) -> tuple[Path, Path]:
    """``bench.json`` and ``bench.md`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    js, md = out_dir / "bench.json", out_dir / "bench.md"
    _atomic(js, json.dumps(doc, indent=1, default=_jsonable) + "\n")
    _atomic(md, markdown(doc))
    return js, md


def _jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def load(path) -> dict:
    from ..errors import ParameterError

    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ParameterError(f"--compare: cannot read bench results {str(path)!r}: {err}") from err
    if not isinstance(doc, dict) or "stages" not in doc:
        raise ParameterError(f"--compare: {str(path)!r} is not a bench.json (no 'stages')")
    return doc


def compare(path_a, path_b) -> str:
    """Markdown table of the rates of two runs (B / A per stage and device)."""
    a, b = load(path_a), load(path_b)

    def rates(doc):
        return {(r["stage"], r["device"]): r for r in doc["stages"] if r.get("status") == "ok"}
    ra, rb = rates(a), rates(b)

    def who(doc, path):
        return (f"{path} (commit {doc.get('git') or '?'}, "
                f"{', '.join(doc.get('device_names', {}).values())})")
    lines = [f"A: {who(a, path_a)}", f"B: {who(b, path_b)}", "",
             "| stage | device | A rate | B rate | B / A |", "|---|---|---:|---:|---:|"]
    keys = list(dict.fromkeys([(r["stage"], r["device"]) for r in a["stages"] + b["stages"]]))
    for k in keys:
        x, y = ra.get(k), rb.get(k)
        unit = (x or y or {}).get("rate_unit", "")
        lines.append(f"| {k[0]} | {k[1]} | {_rate(x['rate']) + ' ' + unit if x else '-'} | "
                     f"{_rate(y['rate']) + ' ' + unit if y else '-'} | "
                     f"{y['rate'] / x['rate']:.2f} |" if x and y else
                     f"| {k[0]} | {k[1]} | {_rate(x['rate']) if x else '-'} | "
                     f"{_rate(y['rate']) if y else '-'} | - |")
    for name, doc in (("A", a), ("B", b)):
        for dev, pr in doc.get("projection", {}).items():
            e = pr.get("end_to_end")
            if e:
                lines.append(f"\n{name} one hour on {dev}: {_dur(e['seconds'])} ({e['bound']})")
    return "\n".join(lines) + "\n"

"""What a benchmark run leaves behind: the printed tables, runs/benchmark.json and the Markdown for results.md.

The JSON holds "machine" and "limits" (of the latest run that measured them) and one entry per benchmark, each
with its own command, time, machine (and for training, the limits its fractions used) and its ``rows``. Writing
merges into the existing file, so running one benchmark replaces only its own entry; the write is atomic.
``results_markdown`` renders the training rows it finds with the limits and the commands that produced them.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.checkpoint import atomic_write_text

TRAINING = ("vae", "glow", "pggan", "predictor")


def print_table(name: str, rows: list[dict]) -> None:
    if not rows:
        print(f"\n== {name} == (no rows)")
        return
    columns = list(dict.fromkeys(c for r in rows for c in r))
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


def write_json(path: str | Path, results: dict) -> dict:
    """Merge ``results`` into the JSON file at ``path`` (other entries kept) atomically; returns the merged dict."""
    path = Path(path)
    try:
        merged = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        merged = {}
    if not isinstance(merged, dict):
        merged = {}
    merged.update(results)
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged


def limits_line(limits: dict) -> str:
    matmul, conv = limits.get("matmul_gflops", limits["gflops"]), limits.get("conv_gflops", {})
    rates = ", ".join(f"{p} {g:,.1f} GFLOP/s (matmul n={limits.get('matmul_n', {}).get(p, '?')} "
                      f"{matmul.get(p, g):,.1f}, 3x3 conv {conv.get(p, 0):,.1f})" for p, g in limits["gflops"].items())
    return (f"limit {rates}; copy {limits['copy_gb_per_s']:,.1f} GB/s ({limits.get('copy_mib', '?')} MiB); "
            f"torch threads {limits.get('threads', '?')} on {limits.get('device', '?')}, median of "
            f"{limits.get('repeats', '?')}{_measurements(limits)}")


def _measurements(limits: dict) -> str:
    """'; the faster of 2 measurements (fp32 50.5 / 79.9, ...)' when the limit was measured more than once."""
    measured = limits.get("measurements") or []
    if len(measured) < 2:
        return ""
    rates = ", ".join(f"{p} " + " / ".join(f"{m[p]:,.1f}" for m in measured) for p in measured[0])
    return f"; the faster of {len(measured)} measurements ({rates})"


def machine_line(machine: dict) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    yes = {True: "yes", False: "no"}
    family = f" ({machine['cpu_family']})" if machine.get("cpu_family") else ""
    return (f"{machine.get('cpu', '?')}{family}{gpu}: avx512_bf16 {yes.get(machine.get('avx512_bf16'), '?')}, AMX "
            f"{yes.get(machine.get('amx'), '?')}, {machine.get('cores', '?')} cores, torch threads "
            f"{machine.get('threads', '?')}, torch {machine.get('torch', '?')}, {machine.get('date', '?')}")


def _verdict(row: dict) -> str:
    if row.get("passed") in ("pass", "FAIL"):
        sign = ">=" if row["passed"] == "pass" else "<"
        return f"{row['passed']} ({row['fraction_of_limit']:.3f} {sign} {row['target']:.2f})"
    return "-"


def results_markdown(results: dict) -> str:
    """The training table (method, size, mode, img/s, GFLOP/img, fraction of limit, peak MB, pass/fail), the
    limits and the commands, as Markdown that docs/results.md can include verbatim."""
    entries = [(m, results[m]) for m in TRAINING if isinstance(results.get(m), dict)]
    lines = ["### Training throughput against the machine's limit", ""]
    if not entries:
        return "\n".join([*lines, "No training benchmark in these results.", ""])
    runs: dict[tuple, list[str]] = {}
    for method, entry in entries:
        runs.setdefault((entry.get("command", "?"), entry.get("time", "?")), []).append(method)
    for (command, when), methods in runs.items():
        entry = results[methods[0]]
        lines.append(f"- `{command}` ({', '.join(methods)}; {when}; median of {entry.get('steps', '?')} steps "
                     f"after {entry.get('warmup', '?')} warm-up)")
        if entry.get("machine"):
            lines.append(f"  - machine: {machine_line(entry['machine'])}")
        if entry.get("limits"):
            lines.append(f"  - limits, measured in the same run: {limits_line(entry['limits'])}")
    lines += ["", "| method | size | mode | img/s | GFLOP/img | fraction of limit | peak MB | pass/fail |",
              "|---|---|---|---|---|---|---|---|"]
    for _, entry in entries:
        for r in entry.get("rows", []):
            lines.append(f"| {r['method']} | {r['size']} ({r['res']}px, batch {r['batch']}) | {r['mode']} | "
                         f"{r['img_per_s']:,.2f} | {r['gflop_per_image']:.4g} | {r['fraction_of_limit']:.3f} "
                         f"({r['precision']}) | {r['peak_MB']:,.0f} | {_verdict(r)} |")
    peak = next((e.get("peak_memory") for _, e in entries if e.get("peak_memory")), None)
    start = next((e.get("peak_MB_at_start") for _, e in entries if e.get("peak_MB_at_start")), None)
    lines += ["", "- fraction of limit = GFLOP/img x img/s / the limit GFLOP/s of the row's precision (the faster of "
              "a matmul and a 3x3 convolution), measured in the same run, before and after the rows (the faster of the "
              "two); GFLOP/img is torch.utils.flop_counter's count of one training step (matmuls and "
              "convolutions, forward + backward) over the batch."]
    targets = {m: e.get("target_fraction_bf16") for m, e in entries if e.get("target_fraction_bf16") is not None}
    if targets:
        lines.append("- pass/fail: reference-size rows in bf16 against a fraction of the bf16 limit ("
                     + ", ".join(f"{m} >= {t:.2f}" for m, t in targets.items())
                     + "); the other methods have no target yet.")
    if peak:
        lines.append(f"- peak MB: {peak}" + (f"; {start:,.0f} MB when the first row started (imports)." if start
                                            else "."))
    refs = [(m, e["references"]) for m, e in entries if e.get("references")]
    if refs:
        lines.append(f"- For information only, not this run: the reference implementations at the reference size, "
                     f"measured {refs[0][1].get('measured', '?')}: " + "; ".join(
                         f"{m} ({ref['reference']}) {ref['fp32']} img/s fp32, {ref['bf16']} bf16" for m, ref in refs)
                     + ".")
    return "\n".join(lines) + "\n"

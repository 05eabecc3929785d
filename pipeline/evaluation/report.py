"""The evaluation's verdicts and its words: pass/fail targets, the generated discussion, the score plots, and
the writer of OUT/metrics.json, OUT/report.md and OUT/images/score_vs_strength.png.

Everything here reads the result dicts ``pipeline.evaluation.run`` builds (one per method; see ``targets``
for the keys it needs), so it can be tested on a hand-made dict without a model.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.attributes import POSE
from common.checkpoint import atomic_write_text
from common.grids import atomic_save
from common.synthetic import TURN_YAW

TARGETS = {"smiling_success": "Smiling edit success >= 90% in both directions",
           "yaw_monotone": "pose walk monotone (and rising) in the judge's yaw for >= 90% of faces",
           "keep_cuts_leakage": "--keep cuts leakage into the kept attribute by >= 50%",
           "glow_exact": "Glow reconstruction exact (max pixel error 0 on the n_bits grid)"}
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def targets(result: dict) -> dict:
    """Pass/fail (or n/a) of the synthetic-set targets for one method, with the measured value."""
    attrs, out = result["attributes"], {}
    smile = attrs.get("Smiling")
    if smile:
        value = min(smile["success_positive"]["success"], smile["success_negative"]["success"])
        out["smiling_success"] = {"status": "pass" if value >= 0.9 else "fail", "value": value}
    pose = attrs.get(POSE)
    if pose:
        value = pose["monotonicity"]["rising_monotone_fraction"]  # a flat walk is monotone but is no yaw walk
        out["yaw_monotone"] = {"status": "pass" if value >= 0.9 else "fail", "value": value}
    reductions = [v for a in attrs.values() if "keep" in a for v in a["keep"]["reduction_percent"].values()]
    if reductions:
        value = min(reductions)
        out["keep_cuts_leakage"] = {"status": "pass" if math.isfinite(value) and value >= 50 else "fail",
                                    "value": value}
    recon = result["reconstruction"]
    if "max_abs_error_on_grid" in recon:
        out["glow_exact"] = {"status": "pass" if recon["max_abs_error_on_grid"] == 0 else "fail",
                             "value": recon["max_abs_error_on_grid"]}
    for key in TARGETS:
        out.setdefault(key, {"status": "n/a", "value": None})
    return out


def explain(name: str, key: str, result: dict, strengths: np.ndarray) -> str:
    """One generated sentence: the measured value of a target and, for a failure, what the numbers point at."""
    t = result["targets"][key]
    attrs = result["attributes"]
    hi = float(np.max(strengths))
    if key == "smiling_success":
        s = attrs["Smiling"]
        up, down, slope = s["success_positive"], s["success_negative"], s["slope"]["mean"]
        text = (f"{name}: Smiling edit success {up['success']:.0%} towards smiling and {down['success']:.0%} "
                f"away from it ({t['status']}).")
        if t["status"] == "fail":
            worst = up if up["success"] < down["success"] else down
            side = "+" if worst is up else "-"
            if abs(slope) * hi < 0.2:
                text += (f" The direction barely moves the judge's score (slope {slope:+.3f} per unit strength), "
                         "so it does not capture the smile the judge sees.")
            else:
                text += (f" The score moves the right way (slope {slope:+.3f}) but at {side}{hi:g} the mean judge "
                         f"score is only {worst['mean_end_score']:.2f}; a longer walk would be needed.")
        return text
    if key == "yaw_monotone":
        p = attrs[POSE]
        mono, inner = p["monotonicity"], p.get("monotonicity_inner_half")
        text = (f"{name}: the judge's yaw rises monotonically along the pose walk for "
                f"{mono['rising_monotone_fraction']:.0%} of faces (monotone including flat walks "
                f"{mono['monotone_fraction']:.0%}, Spearman rho {fmt(mono['spearman_mean'], '.2f')}, slope "
                f"{p['slope']['mean']:+.3f} yaw per unit strength; {t['status']}).")
        if t["status"] == "fail" and mono["monotone_fraction"] - mono["rising_monotone_fraction"] >= 0.5:
            return text + " Most walks are flat: the pose direction does not move the yaw the judge reads."
        if t["status"] == "fail" and inner and inner["rising_monotone_fraction"] >= 0.9:
            text += (f" Within |a| <= {hi / 2:g} it is monotone for {inner['rising_monotone_fraction']:.0%}: the walk "
                     "stops being monotone only at large strengths, consistent with leaving the region the model was "
                     "trained on.")
        elif t["status"] == "fail":
            text += (f" Even within |a| <= {hi / 2:g} only {(inner or mono)['rising_monotone_fraction']:.0%} are "
                     "monotone: the pose direction is entangled with other changes the judge reads as yaw.")
        return text
    if key == "keep_cuts_leakage":
        parts = []
        for attribute, a in attrs.items():
            if "keep" not in a:
                continue
            k = a["keep"]
            before, after = a["success_positive"]["success"], k["success_positive"]["success"]
            for kept, red in k["reduction_percent"].items():
                parts.append(f"editing {attribute} moved {kept} by {k['leakage_without'][kept]:.3f} without "
                             f"--keep and {k['leakage_with'][kept]:.3f} with it ({red:+.0f}%), while the "
                             f"{attribute} success towards + went from {before:.0%} to {after:.0%}")
                if t["status"] == "fail":
                    cos = k.get("cosine_to_unconditioned")
                    if cos is not None and cos > 0.95:
                        parts[-1] += (f"; the conditioned direction is almost the original one (cosine {cos:.2f}), "
                                      "so the two attributes' directions were already nearly orthogonal and the "
                                      "leakage is not linear in the latents")
                    elif k["leakage_without"][kept] < 0.05:
                        parts[-1] += "; there was little leakage to cut in the first place"
                    else:
                        parts[-1] += (f"; the projection changed the direction (cosine {cos:.2f}) but the kept "
                                      "attribute still follows the edit through correlated features")
        return f"{name}: " + "; ".join(parts) + f" ({t['status']})."
    recon = result["reconstruction"]
    return (f"{name}: the largest pixel error of the unedited round trip on the {recon.get('n_bits')}-bit grid is "
            f"{recon['max_abs_error_on_grid']:g} ({t['status']}).")


def other_findings(name: str, result: dict) -> list[str]:
    """Generated remarks beyond the targets: edits that fell short, the worst leakage, sample quality vs floor."""
    out = []
    for attribute, a in result["attributes"].items():
        short = [f"{side} {a[key]['success']:.0%} (mean end score {a[key]['mean_end_score']:.2f})"
                 for side, key in (("+", "success_positive"), ("-", "success_negative")) if a[key]["success"] < 0.9]
        if short and attribute != "Smiling":
            out.append(f"{name}: the {attribute} edit reaches the target side for fewer than 90% of faces: "
                       + ", ".join(short) + f"; slope {a['slope']['mean']:+.3f} per unit strength.")
    leaks = [(v, attribute, judged) for attribute, a in result["attributes"].items()
             for judged, v in a["leakage"].items() if judged != attribute and judged != POSE]
    if leaks:
        v, attribute, judged = max(leaks)
        out.append(f"{name}: largest leakage: editing {attribute} moves the judge's {judged} probability by "
                   f"{v:.3f} on average (its own score moved by "
                   f"{result['attributes'][attribute]['leakage'][attribute]:.3f}).")
    if "turn" in result:
        out.append(turn_finding(name, result["turn"]))
    quality = result["sample_quality"]
    fd, reference = quality["frechet_judge"], quality["reference_frechet_train_vs_test"]
    if reference > 0:
        out.append(f"{name}: sample Frechet distance {fd:.3f} is {fd / reference:.1f}x the real-vs-real floor "
                   f"({reference:.3f}).")
    return out


def turn_finding(name: str, turn: dict) -> str:
    """The turn check in words: does the latent line follow the turn, and how close do the pose edits come?"""
    text = _line_finding(name, turn)
    pe = turn.get("pose_edits")
    if pe:
        parts = [f"{m} {e['mean_db_other_frames']:.1f} dB" for m, e in pe["methods"].items()]
        text += (f" Pose edits of the frontal frame against the true frames: {', '.join(parts)} (no edit "
                 f"{pe['no_edit_mean_db_other_frames']:.1f} dB, reconstruction "
                 f"{fmt(pe.get('reconstruction_mean_db_other_frames'), '.1f')} dB).")
    return text


def _line_finding(name: str, turn: dict) -> str:
    """One sentence on the latent line between a turn's ends: a turn or a cross-fade?"""
    mean = turn["interior_mean_db"]
    line, fade, recon, ends = mean["latent_line"], mean["crossfade"], mean.get("reconstruction"), turn["ends_mean_db"]
    text = (f"{name}: between the encoded ends of a true head turn (ends reconstructed at {ends:.1f} dB), the latent "
            f"line matches the true frames at {line:.1f} dB, the pixel cross-fade of the ends at {fade:.1f} dB"
            + (f", the model's own reconstructions of those frames at {recon:.1f} dB" if recon is not None else ""))
    if ends - fade < 5:
        return text + (": the ends themselves are too far from the true frames for this test to tell a turn from a "
                       "cross-fade; look at the grid.")
    if line - fade < 1.5:
        return text + (": the line is a double exposure, not a turn. Pose is not linear in this latent space, and a "
                       "linear pose direction cannot be expected to turn heads either; the judge still reads the yaw "
                       "moving across it (a cross-fade's features shift), which is why a linear pose walk can pass "
                       "as monotone.")
    if recon is not None and recon - line < 2:
        return text + ": the line follows the turn."
    return text + ": the line is partly a turn, partly a cross-fade."


def fmt(value, spec: str = ".3f") -> str:
    """A number for a table cell: '-' for missing or nan, 'inf' for +inf, strings as they are."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if isinstance(value, float) and value == math.inf else "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def _pil_plot(plot_data: dict, shown: list[str], strengths: np.ndarray, path: Path) -> None:
    """The same panels drawn with PIL, for installs without matplotlib (mean lines only, no bands)."""
    from PIL import ImageDraw

    w, h, margin = 420, 300, 48
    canvas = Image.new("RGB", (w * len(shown), h), "white")
    draw = ImageDraw.Draw(canvas)
    for p, attribute in enumerate(shown):
        x0, x1, y0, y1 = p * w + margin, (p + 1) * w - 12, 24, h - margin
        curves = {n: np.asarray(d[attribute]["mean"], dtype=float) for n, d in plot_data.items() if attribute in d}
        lo = min(float(c.min()) for c in curves.values())
        hi = max(float(c.max()) for c in curves.values())
        lo, hi = (lo - 0.05, hi + 0.05) if hi - lo < 1e-6 else (lo, hi)
        if attribute != POSE:  # probabilities: the full [0, 1] axis shows how far from 0.5 the walk gets
            lo, hi = 0.0, 1.0
        box = np.array([x0, x1, y0, y1, lo, hi, strengths[0], strengths[-1]], dtype=float)
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, 6), f"{attribute}: judge " + ("yaw" if attribute == POSE else "probability"), fill="black")
        for a in strengths:
            draw.text((_plot_xy(box, a, lo)[0] - 8, y1 + 4), f"{a:+.1f}", fill="black")
        for v in (lo, (lo + hi) / 2, hi):
            draw.text((p * w + 4, _plot_xy(box, 0, v)[1] - 6), f"{v:.3g}", fill="black")
        for i, (name, curve) in enumerate(curves.items()):
            colour = PALETTE[i % len(PALETTE)]
            draw.line([_plot_xy(box, a, v) for a, v in zip(strengths, curve, strict=True)], fill=colour, width=2)
            draw.text((x0 + 6, y0 + 4 + 12 * i), name, fill=colour)
        draw.text(((x0 + x1) / 2 - 30, h - 20), "edit strength a", fill="black")
    atomic_save(canvas, path, "PNG")


def _plot_xy(box: np.ndarray, a: float, v: float) -> tuple[float, float]:
    """Data (strength a, value v) -> pixel (x, y) inside box = (x0, x1, y0, y1, lo, hi, a_min, a_max)."""
    x0, x1, y0, y1, lo, hi, a0, a1 = box
    return float(x0 + (a - a0) / (a1 - a0) * (x1 - x0)), float(y1 - (v - lo) / (hi - lo) * (y1 - y0))


def write_plots(plot_data: dict, strengths: np.ndarray, out: Path) -> list[str]:
    """Judge score vs strength per method for Smiling and pose (mean +- std over faces); returns the paths."""
    shown = [a for a in ("Smiling", POSE) if any(a in d for d in plot_data.values())]
    if not shown:
        return []
    path = out / "images" / "score_vs_strength.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:  # listed in requirements.txt, but the report must not depend on it
        _pil_plot(plot_data, shown, strengths, path)
        return [str(path.relative_to(out))]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    for ax, attribute in zip(axes[0], shown, strict=True):
        for name, data in plot_data.items():
            if attribute not in data:
                continue
            mean, std = np.asarray(data[attribute]["mean"]), np.asarray(data[attribute]["std"])
            ax.plot(strengths, mean, marker="o", label=name)
            ax.fill_between(strengths, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("edit strength a")
        ax.set_ylabel("judge: predicted yaw" if attribute == POSE else f"judge: P({attribute})")
        ax.set_title(f"{attribute}: judge score along the walk")
        ax.axvline(0, color="grey", lw=0.5)
        if attribute != POSE:
            ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:  # written through the project's one atomic image write
        atomic_save(image, path, "PNG")
    return [str(path.relative_to(out))]


def write_report(report: dict, plots: list[str], strengths: np.ndarray) -> str:
    """report.md's text: targets, edit, leakage, quality and turn tables, pictures and the generated discussion."""
    methods = report["methods"]
    names = list(methods)
    lines = ["# Evaluation: the methods compared on the same edits", "",
             f"Command: `{report['command']}`  ", f"Judge: `{report['judge']['run']}` (factor heads: "
             f"{', '.join(report['judge']['factor_names']) or 'none'}); strengths "
             f"{strengths.min():g}..{strengths.max():g} in {len(strengths)} steps; {report['config']['num']} faces "
             "per edit.", ""]
    for note in report["notes"]:
        lines.append(f"- Note: {note}")
    lines += ["", "## Targets", "", "| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in TARGETS.items():
        cells = []
        for n in names:
            t = methods[n]["targets"][key]
            spec = {"keep_cuts_leakage": "+.0f", "glow_exact": "g"}.get(key, ".0%")
            unit = "%" if key == "keep_cuts_leakage" else ""
            cells.append(t["status"] if t["value"] is None else f"{t['status']} ({fmt(t['value'], spec)}{unit})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Edits", "", "Success: fraction of faces on the target side at the walk's end (probability "
              "0.5; yaw 0 for pose). Monotone: judge score non-decreasing along the walk. Slope: judge score per "
              "unit strength (probability, or yaw for pose). Content: pixel L1 ([-1, 1] units) and judge-feature "
              "distance (relative to the unedited features' norm) between the unedited reconstruction and the "
              "walk's two ends.", "",
              "| method | attribute | success + | success - | monotone (rising) | Spearman | slope | pixel L1 | "
              "feature dist (rel.) |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for attribute, a in methods[n]["attributes"].items():
            lines.append(f"| {n} | {attribute} | {a['success_positive']['success']:.0%} | "
                         f"{a['success_negative']['success']:.0%} | {a['monotonicity']['monotone_fraction']:.0%} "
                         f"({a['monotonicity']['rising_monotone_fraction']:.0%}) | "
                         f"{fmt(a['monotonicity']['spearman_mean'], '.2f')} | {a['slope']['mean']:+.3f} | "
                         f"{a['content']['l1']:.3f}"
                         + (f" ({a['content']['outside_mouth_l1']:.3f} outside the mouth)"
                            if "outside_mouth_l1" in a["content"] else "")
                         + f" | {fmt(a['content'].get('feature_distance_relative'), '.3f')} |")
    attributes = report["config"]["attributes"]
    lines += ["", "## Leakage", "", "Mean |change| of the judge's score between a = 0 and the + end of the walk "
              "(rows: edited, columns: judged; the diagonal is the intended change; pose column in yaw units).", ""]
    for n in names:
        lines += [f"**{n}**", "", "| edited | " + " | ".join(attributes) + " | largest other |",
                  "|---|" + "---|" * (len(attributes) + 1)]
        for attribute, a in methods[n]["attributes"].items():
            others = {k: v for k, v in a["leakage"].items() if k not in attributes}
            top = max(others, key=others.get)
            lines.append(f"| {attribute} | " + " | ".join(f"{a['leakage'][k]:.3f}" for k in attributes)
                         + f" | {top} {others[top]:.3f} |")
        lines.append("")
    keep_rows = [(n, attribute, a["keep"]) for n in names for attribute, a in methods[n]["attributes"].items()
                 if "keep" in a]
    if keep_rows:
        lines += ["Conditional editing (--keep):", "", "| method | edit | kept | leakage without | with | reduction "
                  "| success + with keep | cosine to original |", "|---|---|---|---|---|---|---|---|"]
        for n, attribute, k in keep_rows:
            for kept in k["kept"]:
                lines.append(f"| {n} | {attribute} | {kept} | {k['leakage_without'][kept]:.3f} | "
                             f"{k['leakage_with'][kept]:.3f} | {fmt(k['reduction_percent'][kept], '+.0f')}% | "
                             f"{k['success_positive']['success']:.0%} | {fmt(k['cosine_to_unconditioned'], '.3f')} |")
        lines.append("")
    lines += ["## Reconstruction and sample quality", "", f"Frechet distance in the judge's feature space between "
              f"real test images and samples ({report['config']['fd_images']} each); the floor is the distance "
              "between real train and real test images.", "",
              "| method | reconstruction | PSNR (dB) | exact | samples FD (judge) | floor | Inception FID |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        r, q = methods[n]["reconstruction"], methods[n]["sample_quality"]
        psnr_text = fmt(r.get("mean_db"), ".2f") + (f" (n={r['n']})" if r.get("n") else "")
        if "psnr_vs_input_db" in r:
            psnr_text += f"; {fmt(r['psnr_vs_input_db'], '.2f')} vs the 8-bit input"
        lines.append(f"| {n} | {r['kind']} | {psnr_text} | {fmt(r.get('exact_fraction'), '.0%')} | "
                     f"{q['frechet_judge']:.3f}" + (f" (T={q['temperature']:g})" if "temperature" in q else "")
                     + f" | {q['reference_frechet_train_vs_test']:.3f} | "
                     f"{fmt(q['inception_fid'], '.2f')} |")
    turns = [n for n in names if "turn" in methods[n]]
    if turns:
        lines += ["", "## Can the latent space turn a head?", "",
                  f"Synthetic faces rendered turning from -{TURN_YAW * 40:g} to +{TURN_YAW * 40:g} degrees (all else "
                  "fixed); the two end frames are encoded and the latent line between them decoded. PSNR against the "
                  "true in-between frames (mean of the interior frames): a latent space in which pose is linear "
                  "scores near the model's own reconstruction of those frames, one whose line is a double exposure "
                  "scores near the pixel cross-fade of the ends.", "",
                  "| method | ends (dB) | latent line (dB) | pixel cross-fade (dB) | reconstruction of the true frames "
                  "(dB) | judge yaw along the line | along the true turn |", "|---|---|---|---|---|---|---|"]
        for n in turns:
            tr = methods[n]["turn"]
            mean = tr["interior_mean_db"]
            lines.append(f"| {n} | {tr['ends_mean_db']:.1f} | {mean['latent_line']:.1f} | {mean['crossfade']:.1f} | "
                         f"{fmt(mean.get('reconstruction'), '.1f')} | "
                         + ", ".join(f"{v:+.2f}" for v in tr["judge_yaw"]["latent_line"]) + " | "
                         + ", ".join(f"{v:+.2f}" for v in tr["judge_yaw"]["true"]) + " |")
        paths = [n for n in turns if "path" in methods[n]["turn"]]
        if paths:
            lines += ["", "How curved the encoded turns are: the share of each face's path variance on its first "
                      "three principal components (a straight path has all of it on the first), and how far the "
                      "middle (frontal) frame lies from the midpoint of the chord between the end frames.", "",
                      "| method | variance on PC 1 / 2 / 3 | chord | middle frame off the chord's midpoint |",
                      "|---|---|---|---|"]
            for n in paths:
                pa = methods[n]["turn"]["path"]
                lines.append(f"| {n} | " + " / ".join(f"{v:.0%}" for v in pa["pc_shares"])
                             + f" | {pa['chord']:.1f} | {pa['middle_offset']:.1f} |")
        edits = [n for n in turns if "pose_edits" in methods[n]["turn"]]
        if edits:
            lines += ["", "The pose edits themselves, from the encoded frontal frame of the same turns: each walked to "
                      "the strength of every true frame's yaw and compared with the true frames (mean PSNR over the "
                      "frames other than the frontal one). No edit at all (the frontal reconstruction for every "
                      "frame) is the floor; the reconstruction of the true frames is the ceiling.", "",
                      "| method | pose edit | PSNR vs the true frames (dB) | no edit (dB) | reconstruction (dB) | "
                      "judge yaw along the edit |", "|---|---|---|---|---|---|"]
            for n in edits:
                pe = methods[n]["turn"]["pose_edits"]
                for m, e in pe["methods"].items():
                    lines.append(f"| {n} | {m} | {e['mean_db_other_frames']:.1f} | "
                                 f"{pe['no_edit_mean_db_other_frames']:.1f} | "
                                 f"{fmt(pe.get('reconstruction_mean_db_other_frames'), '.1f')} | "
                                 + ", ".join(f"{v:+.2f}" for v in e["judge_yaw"]) + " |")
        lines += [""] + [f"![{n} turn]({methods[n]['turn']['grid']})" for n in turns]
    factor_names = [f for f in ("smile", "yaw") if f in report["judge"]["factor_names"]]
    if factor_names:
        lines += ["", "## Synthetic ground truth", "", "Judge's predicted factors per unit strength (slope).", "",
                  "| method | edit | " + " | ".join(factor_names) + " |", "|---|---|" + "---|" * len(factor_names)]
        for n in names:
            for attribute, a in methods[n]["attributes"].items():
                lines.append(f"| {n} | {attribute} | " + " | ".join(f"{a['factor_slopes'][f]:+.3f}"
                                                                      for f in factor_names) + " |")
    lines += ["", "## Pictures", ""] + [f"![judge score vs strength]({p})" for p in plots]
    for n in names:
        lines += ["", f"**{n}**", ""] + [f"![{n} {a}]({e['grid']})" for a, e in methods[n]["attributes"].items()]
    lines += ["", "## Discussion", ""]
    for key in TARGETS:
        measured = [n for n in names if methods[n]["targets"][key]["status"] != "n/a"]
        for n in measured:
            lines.append("- " + explain(n, key, methods[n], strengths))
    for n in names:
        lines += ["- " + line for line in other_findings(n, methods[n])]
    if len(names) > 1:
        best_fd = min(names, key=lambda n: methods[n]["sample_quality"]["frechet_judge"])
        lines.append(f"- Lowest sample Frechet distance (judge features): {best_fd} "
                     f"({methods[best_fd]['sample_quality']['frechet_judge']:.3f}).")
        common_attrs = [a for a in attributes if all(a in methods[n]["attributes"] for n in names)]
        for attribute in common_attrs[:1]:
            best = min(names, key=lambda n: methods[n]["attributes"][attribute]["content"]["l1"])
            lines.append(f"- Best content preservation for {attribute} (pixel L1 at the walk ends): {best} "
                         f"({methods[best]['attributes'][attribute]['content']['l1']:.3f}).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------


def json_ready(value):
    """Numbers/arrays -> plain JSON; inf and nan -> null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def write_outputs(report: dict, plot_data: dict, strengths: np.ndarray, out: Path) -> None:
    """Write OUT/images/score_vs_strength.png, OUT/metrics.json and OUT/report.md (each atomically)."""
    out = Path(out)
    plots = write_plots(plot_data, strengths, out)
    atomic_write_text(out / "metrics.json", json.dumps(json_ready(report), indent=2) + "\n")
    atomic_write_text(out / "report.md", write_report(report, plots, strengths))

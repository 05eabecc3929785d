"""The evaluation as a library: every method's edits measured with one judge (scripts/evaluate.py is its CLI).

- ``metrics``: batched encode/decode, judge scoring, one walk's numbers, real features for Frechet distances;
- ``turns``: the synthetic turn check (can the latent space turn a head?);
- ``report``: pass/fail targets, the generated discussion, plots, metrics.json and report.md;
- ``run``: ``evaluate_runs`` / ``evaluate_method`` with an ``EvaluationOptions``.
"""

from pipeline.evaluation.metrics import JUDGED, RealFeatures, decode_all, encode_all, run_walk, walk_metrics
from pipeline.evaluation.report import TARGETS, explain, json_ready, targets, write_outputs, write_report
from pipeline.evaluation.run import (
    DEFAULT_ATTRIBUTES,
    EvaluationOptions,
    evaluate_method,
    evaluate_runs,
    make_strengths,
    parse_keep_map,
    parse_pose_methods,
)
from pipeline.evaluation.turns import path_shape, slerp, turn_check

__all__ = ["DEFAULT_ATTRIBUTES", "JUDGED", "TARGETS", "EvaluationOptions", "RealFeatures", "decode_all", "encode_all",
           "evaluate_method", "evaluate_runs", "explain", "json_ready", "make_strengths", "parse_keep_map",
           "parse_pose_methods", "path_shape", "run_walk", "slerp", "targets", "turn_check", "walk_metrics", "write_outputs",
           "write_report"]

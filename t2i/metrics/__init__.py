"""Evaluation metrics, each a registered, versioned protocol (docs/metrics.md).

The registry imports this package for the ``metric`` kind; importing the modules registers them.
"""

from t2i.metrics import caption_consistency, controllability, fid, inception_score, r_precision  # noqa: F401
from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult

__all__ = ["EvalContext", "Metric", "MetricError", "MetricResult"]

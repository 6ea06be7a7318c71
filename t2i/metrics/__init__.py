"""Evaluation metrics, each a registered, versioned protocol (docs/metrics.md).

The registry imports this package for the ``metric`` kind; importing the modules registers them.
"""

from t2i.metrics import (  # noqa: F401
    caption_consistency,
    captioner_accuracy,
    controllability,
    fid,
    inception_score,
    r_precision,
)
from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult

__all__ = ["EvalContext", "Metric", "MetricError", "MetricResult"]

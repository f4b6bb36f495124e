"""torchmetrics Metrics (DDP-synced): faithfulness, localisation, map similarity, complexity, robustness,
randomisation. Each has a functional twin in its module, computing one score per image for a whole batch."""

from captum_ext.metrics.complexity import Complexity, EffectiveComplexity, Sparseness
from captum_ext.metrics.faithfulness import AOPC, DeletionAUC, InsertionAUC
from captum_ext.metrics.faithfulness_correlation import IROF, FaithfulnessCorrelation, MonotonicityCorrelation
from captum_ext.metrics.localisation import LocalisationError, PointingGame, RelevanceMass, RelevanceRankAccuracy
from captum_ext.metrics.random_logit import RandomLogit
from captum_ext.metrics.robustness import (
    AvgSensitivity,
    LocalLipschitzEstimate,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)
from captum_ext.metrics.similarity import MapSimilarity

__all__ = [
    "DeletionAUC",
    "InsertionAUC",
    "AOPC",
    "FaithfulnessCorrelation",
    "MonotonicityCorrelation",
    "IROF",
    "RelevanceMass",
    "RelevanceRankAccuracy",
    "PointingGame",
    "LocalisationError",
    "MapSimilarity",
    "Sparseness",
    "Complexity",
    "EffectiveComplexity",
    "MaxSensitivity",
    "AvgSensitivity",
    "LocalLipschitzEstimate",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
    "RandomLogit",
]

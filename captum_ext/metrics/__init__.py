"""torchmetrics Metrics (DDP-synced): faithfulness, localisation, map similarity."""

from captum_ext.metrics.faithfulness import AOPC, DeletionAUC, InsertionAUC
from captum_ext.metrics.localisation import LocalisationError, PointingGame, RelevanceMass, RelevanceRankAccuracy
from captum_ext.metrics.similarity import MapSimilarity

__all__ = ["DeletionAUC", "InsertionAUC", "AOPC", "RelevanceMass", "RelevanceRankAccuracy", "PointingGame", "LocalisationError",
           "MapSimilarity"]

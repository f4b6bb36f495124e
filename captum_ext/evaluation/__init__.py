"""Faithfulness benchmarks: ROAR and KAR (remove or keep top pixels, retrain) and ROAD (no retraining)."""

from captum_ext.evaluation.results import ROADResult, ROARResult, road_agreement, road_figure
from captum_ext.evaluation.road import road
from captum_ext.evaluation.roar import ROARPlan, kar, roar, roar_plan

__all__ = [
    "roar",
    "kar",
    "road",
    "road_agreement",
    "road_figure",
    "roar_plan",
    "ROARPlan",
    "ROARResult",
    "ROADResult",
]

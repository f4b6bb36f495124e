"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): model-parameter and data randomisation."""

from captum_ext.sanity.data_randomization import data_randomization_test, train_on_random_labels
from captum_ext.sanity.randomization import model_randomization_test, parameter_layers, randomize_layer
from captum_ext.sanity.result import SanityResult

__all__ = [
    "model_randomization_test",
    "data_randomization_test",
    "SanityResult",
    "parameter_layers",
    "randomize_layer",
    "train_on_random_labels",
]

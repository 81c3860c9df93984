"""Training: SPAG's projection step, the Trainer subclasses, and the run pipeline."""

from spard.training.base import SafetyTrainer, SafetyTrainerMixin
from spard.training.projection import PROJECTION_FORMS, ProjectionStats, safety_projection_step
from spard.training.spag import SPAGConfig, SPAGMixin, SPAGTrainer

__all__ = [
    "PROJECTION_FORMS",
    "ProjectionStats",
    "SPAGConfig",
    "SPAGMixin",
    "SPAGTrainer",
    "SafetyTrainer",
    "SafetyTrainerMixin",
    "safety_projection_step",
]

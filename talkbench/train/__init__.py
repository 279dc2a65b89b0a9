"""TalkLip training: the paper's objective (Eq. 7) with the reference's staged schedule.

``load_config`` gives the reference settings (``talklip_reference.toml``) with overrides; ``train`` runs a
resumable training; :class:`TalkLipTrainer` exposes single steps and validation for scripts and tests.
The losses themselves are public in :mod:`talkbench.losses`.
"""

from talkbench.train.config import TrainConfig, load_config
from talkbench.train.loop import (TalkLipTrainer, TrainClip, TrainError, TrainResult, build_trainer, clips_from_list,
                                  generator_from_expert, train)

__all__ = ["TalkLipTrainer", "TrainClip", "TrainConfig", "TrainError", "TrainResult", "build_trainer",
           "clips_from_list", "generator_from_expert", "load_config", "train"]

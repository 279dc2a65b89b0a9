"""TalkLip training: the paper's objective (Eq. 7) with the reference's staged schedule.

``load_config`` gives the reference settings (``talklip_reference.toml``) with overrides; ``train`` runs a
resumable training; :class:`TalkLipTrainer` exposes single steps and validation for scripts and tests.

Everything training lives in this package:

- :mod:`talkbench.train.config` / :mod:`talkbench.train.loop` — settings and the TalkLip training loop;
- :mod:`talkbench.train.losses` — the losses (lip reading, contrastive, GAN, L1) and hybrid-video helpers, public;
- :mod:`talkbench.train.mini_expert` — a mini lip reader as the frozen expert (TalkLip-mini);
- :mod:`talkbench.train.ablation` — the paper's ablation in miniature (train, generate, evaluate, report);
- :mod:`talkbench.train.mini_observers` — training of the mini observers' networks on the synthetic corpus.

Layer: above evaluate and generate (the ablation runs both; validation scores with an observer), below the CLI.
"""

from talkbench.train.config import TrainConfig, load_config
from talkbench.train.loop import (TalkLipTrainer, TrainClip, TrainError, TrainResult, build_trainer, clips_from_list,
                                  generator_from_expert, train)

__all__ = ["TalkLipTrainer", "TrainClip", "TrainConfig", "TrainError", "TrainResult", "build_trainer",
           "clips_from_list", "generator_from_expert", "load_config", "train"]

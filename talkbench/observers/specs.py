"""Every observer's spec: its metrics (column, direction, unit, aggregation), per-clip columns, options, cards.

Declared here, as data, so that the summary schema, ranking, charts, the CLI's metric and option lists and
the checks of the cards are derived without importing any observer module (those load torch and networks;
:func:`talkbench.observers.build` imports one only to build it). Adding an observer = one spec here + one
module (see docs/ADDING_AN_OBSERVER.md). The registry (:mod:`talkbench.observers`) checks at import that no
two specs declare the same summary column differently, the same per-clip column or the same option.
"""

from __future__ import annotations

from talkbench.observers.base import MetricSpec, ObserverSpec, OptionSpec

# ------------------------------------------------------------------------------------------------ metrics
# inputs: where each metric's per-clip inputs live in the stored rows (rates are rebuilt from the integer counts, as
# the summarize functions do, never from the stored per-clip percentages).
_WER2_IN = (("edits", "edits2"), ("units", "ref_words2"))
_CER2_IN = (("edits", "char_edits2"), ("units", "ref_chars2"))
PSNR = MetricSpec("psnr", "higher", "dB", "frame-mean", "PSNR of 96×96 face crops against ground truth", "psnr",
                  inputs=(("values", "psnr"), ("weights", "n_frames")))
PSNR_COMPAT = MetricSpec("psnr_talklip_compat", "higher", "dB", "frame-mean",
                         "PSNR as TalkLip's visual_quality.py computes it (uint8 wrap-around)", "psnr_talklip_compat",
                         inputs=(("values", "psnr_talklip_compat"), ("weights", "n_frames")))
SSIM = MetricSpec("ssim", "higher", "", "frame-mean", "SSIM of 96×96 face crops against ground truth", "ssim",
                  inputs=(("values", "ssim"), ("weights", "n_frames")))
LSE_C = MetricSpec("lse_c", "higher", "", "clip-mean", "SyncNet confidence: median − min distance over offsets",
                   "lse_c",
                   inputs=(("values", "lse_c"),))
LSE_D = MetricSpec("lse_d", "lower", "", "clip-mean", "SyncNet distance at the best offset", "lse_d",
                   inputs=(("values", "lse_d"),))
AV_OFFSET = MetricSpec("av_offset", "zero", "frames", "clip-mean", "audio-visual offset of the best distance",
                       "av_offset",
                       inputs=(("values", "av_offset"),))
WER1 = MetricSpec("wer1", "lower", "%", "corpus", "word error rate of the protocol's lip reader (AV-HuBERT: beam "
                  "search; mini: greedy CTC)", "wer1",
                  inputs=(("edits", "edits1"), ("units", "ref_words1")))
CER1 = MetricSpec("cer1", "lower", "%", "corpus", "character error rate of the protocol's lip reader", "cer1",
                  inputs=(("edits", "char_edits1"), ("units", "ref_chars1")))
WER2 = MetricSpec("wer2", "lower", "%", "utterance-mean", "WER of TalkLip's teacher-forced Conformer, mean of "
                  "utterances", "wer2",
                  inputs=_WER2_IN)
WER2_CORPUS = MetricSpec("wer2_corpus", "lower", "%", "corpus", "WER of the teacher-forced Conformer, corpus-level",
                         "wer2",
                         inputs=_WER2_IN)
CER2 = MetricSpec("cer2", "lower", "%", "utterance-mean", "CER of the teacher-forced Conformer, mean of utterances",
                  "cer2",
                  inputs=_CER2_IN)
CER2_CORPUS = MetricSpec("cer2_corpus", "lower", "%", "corpus", "CER of the teacher-forced Conformer, corpus-level",
                         "cer2",
                         inputs=_CER2_IN)
ACC = MetricSpec("acc", "higher", "%", "accuracy", "LRW 500-word top-1 accuracy (MVM, clip + mirror)", "acc",
                 inputs=(("hits", "acc"),))
ACC_TOP5 = MetricSpec("acc_top5", "higher", "%", "accuracy", "LRW 500-word top-5 accuracy", "acc_top5",
                      inputs=(("hits", "acc_top5"),))
FD_COLOUR = MetricSpec("fd_colour", "lower", "", "set",
                       "Fréchet distance of per-frame colour/edge statistics of face crops, generated vs reference "
                       "(a set-level example metric; not FID)")

# ------------------------------------------------------------------------------------------------ options
LSE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("lse_mode", "str", "wav2lip", "LSE frames: wav2lip (whole frame) or pipeline (face tracks)",
               choices=("wav2lip", "pipeline")),
    OptionSpec("lse_jpeg_compat", "bool", False, "reproduce the reference's ffmpeg JPEG round trip of the frames"),
    OptionSpec("lse_min_track", "int", 100, "pipeline mode: a track needs more than this many detections", minimum=0),
    OptionSpec("lse_min_face_size", "float", 100.0, "pipeline mode: smallest mean face size (pixels)", minimum=0),
    OptionSpec("lse_track_agg", "str", "first", "pipeline mode: per-clip value from tracks",
               choices=("first", "best", "mean")),
    OptionSpec("lse_detector", "str", "dlib", "pipeline mode face detector: dlib (offline) or s3fd (card s3fd)",
               choices=("dlib", "s3fd")),
    OptionSpec("lse_chunk", "int", 0, "lip-network windows per step (0 = auto: 4 on CPU, 64 on CUDA)",
               changes_numbers=False, minimum=0),
)
MAX_FRAMES = OptionSpec("max_frames", "int", None, "lip-reading clips longer than this become error rows "
                        "(default: the checkpoint's limit, 500 for AV-HuBERT)", minimum=1)

# ------------------------------------------------------------------------------------------------ observers
IMAGE_QUALITY = ObserverSpec(
    name="image_quality", module="talkbench.observers.image_quality", cards=(),
    metrics=(PSNR, PSNR_COMPAT, SSIM),
    clip_columns=("psnr", "psnr_talklip_compat", "ssim", "n_frames", "n_frames_generated", "n_frames_reference"))
SYNCNET = ObserverSpec(
    name="syncnet", module="talkbench.observers.syncnet", cards=("syncnet-v2", "s3fd"),
    metrics=(LSE_C, LSE_D, AV_OFFSET), clip_columns=("lse_c", "lse_d", "av_offset", "n_windows", "n_tracks"),
    options=LSE_OPTIONS)
_WER1_COLUMNS = ("wer1", "hyp1", "ref1", "score1", "edits1", "ref_words1", "cer1", "char_edits1", "ref_chars1")
AVHUBERT = ObserverSpec(
    name="avhubert", module="talkbench.observers.avhubert", cards=("avhubert-large-lrs2",),
    metrics=(WER1, CER1), clip_columns=_WER1_COLUMNS,
    options=(MAX_FRAMES,
             OptionSpec("avhubert_beam", "int", 50, "beam width (the reference uses 50)", minimum=1),
             OptionSpec("avhubert_spm_model", "path", None, "SentencePiece model for a checkpoint without task state"),
             OptionSpec("avhubert_dict", "path", None, "dict.wrd.txt for a checkpoint without task state")))
CONFORMER = ObserverSpec(
    name="conformer", module="talkbench.observers.conformer", cards=("conformer-lrs2",),
    metrics=(WER2, WER2_CORPUS, CER2, CER2_CORPUS),
    clip_columns=("wer2", "hyp2", "edits2", "ref_words2", "cer2", "char_edits2", "ref_chars2"),
    options=(OptionSpec("conformer_frame_chunk", "int", 0, "front-end frames per step (0 = all; bounds memory)",
                        changes_numbers=False, minimum=0),))
MVM = ObserverSpec(
    name="mvm", module="talkbench.observers.mvm", cards=("mvm-lrw",),
    metrics=(ACC, ACC_TOP5), clip_columns=("acc", "acc_top5", "pred_word", "label"),
    options=(OptionSpec("mvm_long_clips", "str", "skip", "clips over 29 frames: skip (error row), center or first",
                        choices=("skip", "center", "first")),
             OptionSpec("mvm_test_aug", "bool", True, "add the mirrored clip's logits (MVM's --test_aug)")))
MINI_LIPREADER = ObserverSpec(
    name="mini-lipreader", module="talkbench.observers.mini_lipreader", cards=("mini-lipreader-b", "mini-lipreader-a"),
    metrics=(WER1, CER1), clip_columns=_WER1_COLUMNS,
    options=(OptionSpec("mini_lexicon", "bool", True, "snap each decoded word to the corpus' 51-word vocabulary"),
             OptionSpec("mini_lipreader", "str", "b", "which mini lip reader scores: b (default) or a",
                        choices=("a", "b"))))
MINI_SYNCNET = ObserverSpec(
    name="mini-syncnet", module="talkbench.observers.mini_syncnet", cards=("mini-syncnet", "s3fd"),
    metrics=(LSE_C, LSE_D, AV_OFFSET), clip_columns=SYNCNET.clip_columns, options=LSE_OPTIONS)
COLOUR_STATS = ObserverSpec(
    name="colour_stats", module="talkbench.observers.colour_stats", cards=(),
    metrics=(FD_COLOUR,), clip_columns=("n_frames_colour",), features=("colour_generated", "colour_reference"))

#: Every observer, in summary-column order (the order of their metrics in ``summary.csv``).
ALL_SPECS: tuple[ObserverSpec, ...] = (IMAGE_QUALITY, SYNCNET, AVHUBERT, CONFORMER, MVM, COLOUR_STATS,
                                       MINI_LIPREADER, MINI_SYNCNET)

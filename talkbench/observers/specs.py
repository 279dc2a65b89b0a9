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
# intelligibility (#18): viseme error rate (talkbench.metrics.visemes), defined here because the lip readers' specs
# below list it
VER = MetricSpec("ver", "lower", "%", "corpus", "viseme error rate of the protocol's lip reader (espeak-ng phonemes, "
                 "Neti et al. 2000 viseme classes, word boundaries dropped)", "viseme_edits1",
                 inputs=(("edits", "viseme_edits1"), ("units", "ref_visemes1")))
VER2 = MetricSpec("ver2", "lower", "%", "corpus", "viseme error rate of TalkLip's teacher-forced Conformer "
                  "hypothesis, corpus-level", "viseme_edits2",
                  inputs=(("edits", "viseme_edits2"), ("units", "ref_visemes2")))
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
_WER1_COLUMNS = ("wer1", "hyp1", "ref1", "score1", "edits1", "ref_words1", "cer1", "char_edits1", "ref_chars1",
                 "viseme_edits1", "ref_visemes1")
AVHUBERT = ObserverSpec(
    name="avhubert", module="talkbench.observers.avhubert", cards=("avhubert-large-lrs2",),
    metrics=(WER1, CER1, VER), clip_columns=_WER1_COLUMNS,
    options=(MAX_FRAMES,
             OptionSpec("avhubert_beam", "int", 50, "beam width (the reference uses 50)", minimum=1),
             OptionSpec("avhubert_spm_model", "path", None, "SentencePiece model for a checkpoint without task state"),
             OptionSpec("avhubert_dict", "path", None, "dict.wrd.txt for a checkpoint without task state")))
CONFORMER = ObserverSpec(
    name="conformer", module="talkbench.observers.conformer", cards=("conformer-lrs2",),
    metrics=(WER2, WER2_CORPUS, CER2, CER2_CORPUS, VER2),
    clip_columns=("wer2", "hyp2", "edits2", "ref_words2", "cer2", "char_edits2", "ref_chars2", "viseme_edits2",
                  "ref_visemes2"),
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
    metrics=(WER1, CER1, VER), clip_columns=_WER1_COLUMNS,
    options=(OptionSpec("mini_lexicon", "bool", True, "snap each decoded word to the corpus' 51-word vocabulary"),
             OptionSpec("mini_lipreader", "str", "b", "which mini lip reader scores: b (default) or a",
                        choices=("a", "b"))))
MINI_SYNCNET = ObserverSpec(
    name="mini-syncnet", module="talkbench.observers.mini_syncnet", cards=("mini-syncnet", "s3fd"),
    metrics=(LSE_C, LSE_D, AV_OFFSET), clip_columns=SYNCNET.clip_columns, options=LSE_OPTIONS)
COLOUR_STATS = ObserverSpec(
    name="colour_stats", module="talkbench.observers.colour_stats", cards=(),
    metrics=(FD_COLOUR,), clip_columns=("n_frames_colour",), features=("colour_generated", "colour_reference"))

# ------------------------------------------------------------------------------------------------ visual family (#17)
CSIM = MetricSpec("csim", "higher", "", "clip-mean", "identity similarity: cosine of ArcFace embeddings of each "
                  "generated face and the ground truth's frame-0 face (5-point aligned 112×112)", "csim",
                  inputs=(("values", "csim"),))
IDENTITY = ObserverSpec(
    name="identity", module="talkbench.observers.identity", cards=("arcface-r100-glint360k", "arcface-r50-ms1mv3"),
    metrics=(CSIM,), clip_columns=("csim", "n_frames_csim", "n_no_face_csim"),
    options=(OptionSpec("csim_reference", "str", "first", "CSIM identity reference: first (ground truth's frame 0) "
                        "or same (the ground-truth frame of the same index)", choices=("first", "same")),
             OptionSpec("csim_backbone", "str", "r100-glint360k", "CSIM ArcFace backbone: r100-glint360k (card "
                        "arcface-r100-glint360k) or r50-ms1mv3 (card arcface-r50-ms1mv3)",
                        choices=("r100-glint360k", "r50-ms1mv3"))))
LMD = MetricSpec("lmd", "lower", "px", "frame-mean", "mouth landmark distance: mean distance of dlib points 48-67, "
                 "generated vs ground truth (Chen et al. 2018)", "lmd",
                 inputs=(("values", "lmd"), ("weights", "n_frames_lmd")))
LANDMARK_DISTANCE = ObserverSpec(
    name="landmark_distance", module="talkbench.observers.landmark_distance", cards=(),
    metrics=(LMD,), clip_columns=("lmd", "n_frames_lmd", "n_no_face_lmd"),
    options=(OptionSpec("lmd_align", "str", "none", "LMD landmarks: none (raw pixels, Chen et al. 2018) or "
                        "mouth-centre (each mouth centred first, RAD-NeRF)", choices=("none", "mouth-centre")),))
LPIPS_METRIC = MetricSpec("lpips", "lower", "", "frame-mean", "LPIPS v0.1 of 96×96 face crops against ground truth "
                          "(AlexNet; VGG16 with lpips_net=vgg)", "lpips",
                          inputs=(("values", "lpips"), ("weights", "lpips_n_frames")))
LPIPS = ObserverSpec(
    name="lpips", module="talkbench.observers.lpips", cards=("lpips-alexnet", "lpips-vgg16"),
    metrics=(LPIPS_METRIC,), clip_columns=("lpips", "lpips_n_frames"),
    options=(OptionSpec("lpips_net", "str", "alex", "LPIPS backbone: alex (lpips' default) or vgg",
                        choices=("alex", "vgg")),
             OptionSpec("lpips_chunk", "int", 64, "LPIPS frame pairs per forward pass (bounds memory)",
                        changes_numbers=False, minimum=1)))

FID = MetricSpec("fid", "lower", "", "set", "Fréchet Inception Distance of generated vs ground-truth frames "
                 "(pytorch-fid: pool3 2048-d, bilinear 299; whole frames, or 96×96 face crops with fid_frames=face96)")
FID_OBSERVER = ObserverSpec(
    name="fid", module="talkbench.observers.fid", cards=("fid-inception",),
    metrics=(FID,), clip_columns=("n_frames_fid", "n_frames_fid_reference"),
    features=("fid_generated", "fid_reference"),
    options=(OptionSpec("fid_frames", "str", "whole", "FID frames: whole (the decoded frame) or face96 (the 96×96 "
                        "face crops of PSNR/SSIM)", choices=("whole", "face96")),
             OptionSpec("fid_stride", "int", 1, "FID uses every n-th frame of each clip (from frame 0)", minimum=1),
             OptionSpec("fid_batch", "int", 32, "FID frames per Inception forward pass (bounds memory)",
                        changes_numbers=False, minimum=1)))
FVD = MetricSpec("fvd", "lower", "", "set", "Fréchet Video Distance of generated vs ground-truth 16-frame windows "
                 "(I3D Kinetics-400 logits, 224×224, StyleGAN-V/cd-fvd statistics)")
FVD_OBSERVER = ObserverSpec(
    name="fvd", module="talkbench.observers.fvd", cards=("fvd-i3d",),
    metrics=(FVD,), clip_columns=("n_windows_fvd", "n_windows_fvd_reference"),
    features=("fvd_generated", "fvd_reference"),
    options=(OptionSpec("fvd_windows", "str", "first", "FVD windows per clip: first (16 frames from frame 0) or all "
                        "(every non-overlapping 16-frame window)", choices=("first", "all")),
             OptionSpec("fvd_stride", "int", 1, "FVD takes every n-th frame inside a window (a window spans 16·n "
                        "frames)", minimum=1),
             OptionSpec("fvd_batch", "int", 4, "FVD windows per I3D forward pass (bounds memory)",
                        changes_numbers=False, minimum=1)))

# ------------------------------------------------------------------------------------------------ intelligibility (#18)
# Auto-AVSR (talkbench.observers.avsr, avsr_lipscore): one model (card auto-avsr-vsr), two observers (WER needs
# transcripts, LipScore the ground-truth video)
WER_AVSR = MetricSpec("wer_avsr", "lower", "%", "corpus", "word error rate of Auto-AVSR's VSR model (joint "
                      "CTC/attention beam 40, landmark-aligned mouth ROIs)", "wer_avsr",
                      inputs=(("edits", "edits_avsr"), ("units", "ref_words_avsr")))
CER_AVSR = MetricSpec("cer_avsr", "lower", "%", "corpus", "character error rate of Auto-AVSR's VSR model", "cer_avsr",
                      inputs=(("edits", "char_edits_avsr"), ("units", "ref_chars_avsr")))
VER_AVSR = MetricSpec("ver_avsr", "lower", "%", "corpus", "viseme error rate of Auto-AVSR's VSR model (as ver)",
                      "viseme_edits_avsr", inputs=(("edits", "viseme_edits_avsr"), ("units", "ref_visemes_avsr")))
LIPSCORE = MetricSpec("lipscore", "higher", "", "clip-mean", "LipScore (KeySync 2025): mean frame-wise cosine of "
                      "Auto-AVSR encoder features, generated vs ground truth", "lipscore",
                      inputs=(("values", "lipscore"),))
_AVSR_FRAME_CHUNK = OptionSpec("avsr_frame_chunk", "int", 0, "Auto-AVSR front-end frames per step (0 = all; bounds "
                               "memory)", changes_numbers=False, minimum=0)
AVSR = ObserverSpec(
    name="avsr", module="talkbench.observers.avsr", cards=("auto-avsr-vsr",),
    metrics=(WER_AVSR, CER_AVSR, VER_AVSR),
    clip_columns=("wer_avsr", "hyp_avsr", "ref_avsr", "score_avsr", "edits_avsr", "ref_words_avsr", "cer_avsr",
                  "char_edits_avsr", "ref_chars_avsr", "viseme_edits_avsr", "ref_visemes_avsr"),
    options=(MAX_FRAMES, OptionSpec("avsr_beam", "int", 40, "Auto-AVSR beam width (the reference uses 40)", minimum=1),
             _AVSR_FRAME_CHUNK))
# LipScore loads the same file (card auto-avsr-vsr, through talkbench.observers.avsr.load_shared); the card is declared
# by AVSR only, because a card's metrics must be those of the one spec that lists it (tests/test_spine.py)
AVSR_LIPSCORE = ObserverSpec(
    name="lipscore", module="talkbench.observers.avsr_lipscore", cards=(),
    metrics=(LIPSCORE,), clip_columns=("lipscore", "n_frames_lipscore"), options=(_AVSR_FRAME_CHUNK,))

#: Every observer, in summary-column order (the order of their metrics in ``summary.csv``).
ALL_SPECS: tuple[ObserverSpec, ...] = (IMAGE_QUALITY, SYNCNET, AVHUBERT, CONFORMER, MVM, COLOUR_STATS, FID_OBSERVER,
                                       FVD_OBSERVER, LPIPS,
                                       IDENTITY, LANDMARK_DISTANCE, AVSR, AVSR_LIPSCORE, MINI_LIPREADER,
                                       MINI_SYNCNET)

"""Train the mini observers on a synthetic corpus (:mod:`talkbench.synthetic.corpus`), on CPU, reproducibly.

* :func:`train_lipreader`: a :class:`talkbench.nets.mini_lipreader.MiniLipReader` with CTC over characters plus a
  per-frame loss on the renderer's viseme class and mouth parameters; scored by WER on the test split.
* :func:`train_syncnet`: a width-reduced SyncNet, trained so that each 5-frame video window is nearest to
  the audio window at offset 0 among the offsets -15..15 of the same clip (a softmax over negative
  distances, the quantity LSE measures); scored by LSE-C/LSE-D on test clips in sync and shifted ±5 frames.

Both are deterministic for a seed and a thread count (one process, fixed sampling order).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from talkbench import lse, media
from talkbench.audio_features import syncnet_mfcc
from talkbench.crops.mouth import bgr_to_gray, center_crop
from talkbench.crops.syncnet import resize_frames
from talkbench.metrics.text import char_edits, word_edits
from talkbench.nets.mini_lipreader import (LipReaderConfig, MiniLipReader, encode_text, greedy_decode, save_lipreader,
                                           snap_to_lexicon)
from talkbench.nets.mini_syncnet import build_mini_syncnet, save_mini_syncnet
from talkbench.synthetic import grammar, visemes

logger = logging.getLogger(__name__)

#: gray centre crop kept in memory for training; random 88×88 crops of it give ±4 px translation jitter
TRAIN_CROP = 96
CROP = 88
SHIFT_FRAMES = 5


@dataclass
class CorpusItem:
    """One decoded corpus clip (what training needs of it)."""

    name: str
    text: str                        # lowercase words
    gray: np.ndarray                 # uint8 T×96×96 centre crop of the gray frame
    viseme: np.ndarray               # int64 T
    mouth: np.ndarray                # float32 T×6
    audio: np.ndarray                # int16 N
    frames: np.ndarray | None = None  # uint8 T×H×W×3 BGR (only when asked for)


def _transcript(txt_path: Path) -> str:
    for line in txt_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("Text:"):
            return " ".join(line[len("Text:"):].lower().split())
    raise ValueError(f"{txt_path}: no 'Text:' line; is this a talkbench mini corpus?")


def read_split(corpus_dir: str | Path, split: str, limit: int | None = None, keep_frames: bool = False,
               cache: str | Path | None = None) -> list[CorpusItem]:
    """Decode the clips of one split (filelist order; the first ``limit`` clips).

    Args:
        cache: optional pickle file of the decoded items (written on first use, read afterwards) so that
            several training processes decode the corpus once. Only use a cache file you wrote.
    Raises:
        FileNotFoundError: no ``<corpus_dir>/<split>/filelist.txt``.
    """
    if cache is not None and Path(cache).is_file():
        with open(cache, "rb") as fh:
            items = pickle.load(fh)
        if len(items) >= (limit or 0) and (not keep_frames or items[0].frames is not None):
            logger.info("Read %d %s clips from the cache %s.", len(items), split, cache)
            return items[:limit] if limit is not None else items
    items = _decode_split(corpus_dir, split, limit, keep_frames)
    if cache is not None:
        with open(cache, "wb") as fh:
            pickle.dump(items, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return items


def _decode_split(corpus_dir: str | Path, split: str, limit: int | None, keep_frames: bool) -> list[CorpusItem]:
    root = Path(corpus_dir) / split
    filelist = root / "filelist.txt"
    if not filelist.is_file():
        raise FileNotFoundError(f"{filelist} does not exist; generate the corpus with `talkbench corpus synth`.")
    names = [n.strip() for n in filelist.read_text(encoding="utf-8").splitlines() if n.strip()]
    if limit is not None:
        names = names[:limit]
    items = []
    for name in names:
        base = root / "main" / name
        clip = media.decode_clip(base.with_suffix(".mp4"))
        records = np.load(base.with_name(base.name + ".visemes.npy"))
        t = min(len(clip.frames), len(records))
        mouth = np.stack([records[p] for p in visemes.PARAMS], 1).astype(np.float32)
        items.append(CorpusItem(
            name=name, text=_transcript(base.with_suffix(".txt")),
            gray=np.ascontiguousarray(center_crop(bgr_to_gray(clip.frames[:t]), TRAIN_CROP)),
            viseme=records["viseme"][:t].astype(np.int64), mouth=mouth[:t], audio=clip.audio_int16,
            frames=clip.frames[:t] if keep_frames else None))
    logger.info("Read %d %s clips from %s.", len(items), split, corpus_dir)
    return items


def item_from_synth(clip: Any, keep_frames: bool = False) -> CorpusItem:
    """A :class:`CorpusItem` straight from an in-memory :class:`talkbench.synthetic.corpus.SynthClip` (no codec)."""
    return CorpusItem(name=f"{clip.speaker}/{clip.utt}", text=" ".join(clip.words),
                      gray=np.ascontiguousarray(center_crop(bgr_to_gray(clip.frames), TRAIN_CROP)),
                      viseme=clip.track.viseme.astype(np.int64), mouth=clip.track.params.astype(np.float32),
                      audio=clip.audio_int16, frames=clip.frames if keep_frames else None)


def _centre(gray: np.ndarray) -> np.ndarray:
    off = (gray.shape[1] - CROP) // 2
    return gray[:, off: off + CROP, off: off + CROP]


# ================================================================================== lip reader

@dataclass(frozen=True)
class LipTrainSettings:
    """Training hyper-parameters of a mini lip reader."""

    seed: int = 0
    epochs: int = 12
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup: float = 0.08
    aux_weight: float = 1.0
    max_minutes: float = 0.0        # 0 = no time limit; else stop (and record it) after this long
    threads: int = 2


def _lip_batch(items: Sequence[CorpusItem], rng: np.random.Generator, augment: bool
               ) -> tuple[torch.Tensor, ...]:
    t_max = max(len(it.gray) for it in items)
    x = np.zeros((len(items), t_max, CROP, CROP), np.uint8)
    vis = np.full((len(items), t_max), -100, np.int64)
    mouth = np.zeros((len(items), t_max, 6), np.float32)
    lengths, targets, target_lengths = [], [], []
    for b, it in enumerate(items):
        t = len(it.gray)
        if augment:
            dy, dx = rng.integers(0, TRAIN_CROP - CROP + 1, size=2)
            crop = it.gray[:, dy: dy + CROP, dx: dx + CROP].astype(np.float32)
            gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
            x[b, :t] = np.clip(crop * gain + bias, 0, 255).astype(np.uint8)
        else:
            x[b, :t] = _centre(it.gray)
        vis[b, :t] = it.viseme
        mouth[b, :t] = it.mouth
        lengths.append(t)
        tgt = encode_text(it.text)
        targets.extend(tgt)
        target_lengths.append(len(tgt))
    return (torch.from_numpy(x), torch.tensor(lengths), torch.tensor(targets), torch.tensor(target_lengths),
            torch.from_numpy(vis), torch.from_numpy(mouth))


def lipreader_loss(model: MiniLipReader, batch: tuple[torch.Tensor, ...], aux_weight: float = 1.0
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """CTC + ``aux_weight`` × (viseme cross-entropy + 10 × mouth-parameter MSE) of one batch."""
    x, lengths, targets, target_lengths, vis, mouth = batch
    out = model(x, lengths)
    log_probs = out["ctc"].log_softmax(-1).transpose(0, 1)          # [T,B,C]
    ctc = F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=0, zero_infinity=True)
    ce = F.cross_entropy(out["viseme"].flatten(0, 1), vis.flatten(), ignore_index=-100)
    valid = (vis >= 0).unsqueeze(-1).float()
    mse = ((out["mouth"] - mouth) ** 2 * valid).sum() / valid.sum().clamp(min=1) / mouth.shape[-1]
    loss = ctc + aux_weight * (ce + 10.0 * mse)
    return loss, {"ctc": float(ctc.detach()), "viseme_ce": float(ce.detach()), "mouth_mse": float(mse.detach())}


@torch.inference_mode()
def evaluate_lipreader(model: MiniLipReader, items: Sequence[CorpusItem]) -> dict[str, Any]:
    """WER/CER in percent on clips (centre crops, greedy CTC), raw and snapped to the 51-word lexicon."""
    model.eval()
    totals = {"raw": [0, 0, 0, 0], "lexicon": [0, 0, 0, 0]}
    examples = []
    for it in items:
        x = torch.from_numpy(np.ascontiguousarray(_centre(it.gray)))[None]
        text, _ = greedy_decode(model(x)["ctc"].log_softmax(-1)[0])
        for key, hyp in (("raw", text), ("lexicon", snap_to_lexicon(text, grammar.VOCABULARY))):
            e, n = word_edits(it.text, hyp)
            ce, nc = char_edits(it.text, hyp)
            tot = totals[key]
            tot[0] += e; tot[1] += n; tot[2] += ce; tot[3] += nc
        if len(examples) < 5:
            examples.append((it.text, text))
    res: dict[str, Any] = {}
    for key, (e, n, ce, nc) in totals.items():
        suffix = "" if key == "lexicon" else "_raw"
        res[f"wer{suffix}"] = 100.0 * e / max(n, 1)
        res[f"cer{suffix}"] = 100.0 * ce / max(nc, 1)
    res["n_clips"] = len(items)
    res["examples"] = examples
    return res


def train_lipreader(train: Sequence[CorpusItem], test: Sequence[CorpusItem], out_path: str | Path,
                    config: LipReaderConfig = LipReaderConfig(), settings: LipTrainSettings = LipTrainSettings(),
                    extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, evaluate on ``test``, save to ``out_path``; returns the metadata written into the checkpoint."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = MiniLipReader(config)
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = max(1, len(train) // settings.batch)
    total = steps_per_epoch * settings.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total,
                                                pct_start=settings.warmup, anneal_strategy="cos")
    logger.info("Mini lip reader: %d parameters, %d steps (%d epochs × %d).", n_params, total, settings.epochs,
                steps_per_epoch)
    started = time.perf_counter()
    step, stopped_early, history = 0, False, []
    for epoch in range(settings.epochs):
        model.train()
        order = rng.permutation(len(train))
        run = []
        for s in range(steps_per_epoch):
            batch = _lip_batch([train[i] for i in order[s * settings.batch:(s + 1) * settings.batch]], rng, True)
            loss, parts = lipreader_loss(model, batch, settings.aux_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            run.append(float(loss.detach()))
            if settings.max_minutes and time.perf_counter() - started > 60 * settings.max_minutes:
                stopped_early = True
                break
        minutes = (time.perf_counter() - started) / 60
        ev = evaluate_lipreader(model, test[:40])
        history.append({"epoch": epoch + 1, "loss": float(np.mean(run)), "minutes": round(minutes, 2),
                        "wer40": round(ev["wer"], 2), "wer40_raw": round(ev["wer_raw"], 2)})
        logger.info("epoch %d: loss %.3f (%s), %.1f min, WER(40 test clips) %.1f%% (raw %.1f%%) e.g. %s",
                    epoch + 1, np.mean(run), {k: round(v, 3) for k, v in parts.items()}, minutes, ev["wer"],
                    ev["wer_raw"], ev["examples"][:1])
        if stopped_early:
            break
    train_minutes = (time.perf_counter() - started) / 60
    final = evaluate_lipreader(model, test)
    meta = {"kind": "mini-lipreader", "config": dataclasses.asdict(config), "settings": dataclasses.asdict(settings),
            "n_params": n_params, "n_train_clips": len(train), "steps": step, "stopped_early": stopped_early,
            "train_minutes": round(train_minutes, 2), "torch": str(torch.__version__), "history": history,
            "test": {k: v for k, v in final.items() if k != "examples"}, "test_examples": final["examples"],
            **(extra_meta or {})}
    save_lipreader(model, out_path, meta)
    logger.info("Saved %s: test WER %.2f%% (raw %.2f%%), CER %.2f%% on %d clips, %.1f min.", out_path, final["wer"],
                final["wer_raw"], final["cer"], final["n_clips"], train_minutes)
    return meta


# ================================================================================== SyncNet

@dataclass(frozen=True)
class SyncTrainSettings:
    """Training hyper-parameters of a mini SyncNet."""

    seed: int = 0
    width: float = 0.125
    embed_dim: int = 128
    steps: int = 600
    clips_per_step: int = 6
    windows_per_clip: int = 8
    max_offset: int = 15
    lr: float = 1e-3
    max_minutes: float = 0.0
    threads: int = 2


def shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """Audio moved by ``frames`` video frames (640 samples each), same length: > 0 = audio late."""
    n = abs(int(frames)) * 640
    if frames > 0:
        return np.concatenate([np.zeros(n, audio.dtype), audio[: len(audio) - n]])
    if frames < 0:
        return np.concatenate([audio[n:], np.zeros(n, audio.dtype)])
    return audio


def _sync_clip_tensors(item: CorpusItem) -> tuple[torch.Tensor, int]:
    n = lse.count_windows(len(item.frames), len(item.audio))
    return lse.mfcc_windows(syncnet_mfcc(item.audio), n), n


def _video_windows(frames: np.ndarray, starts: Sequence[int]) -> torch.Tensor:
    """(len(starts), 3, 5, 224, 224) float BGR 0..255 windows (reference layout)."""
    wins = np.stack([resize_frames(frames[s: s + 5]) for s in starts])        # (K,5,224,224,3)
    return torch.from_numpy(wins).permute(0, 4, 1, 2, 3).float()


def sync_loss(model: Any, videos: torch.Tensor, audios: torch.Tensor, rows: Sequence[tuple[int, int, int]],
              max_offset: int = 15) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offset-classification loss of a batch of video windows against their clips' audio windows.

    Args:
        videos: ``(K, 3, 5, 224, 224)`` video windows; audios: ``(A, 1, 13, 20)`` MFCC windows of all clips.
        rows: per video window ``(index of its in-sync audio window in audios, first audio window of its
            clip, windows of its clip)``.
    Returns:
        (loss, logits ``K×A`` = minus distances, -inf outside the clip's offsets ±max_offset, targets ``K``).
    """
    v = model.forward_lip(videos)                                   # (K, D)
    a = model.forward_aud(audios)                                   # (A, D)
    d = torch.cdist(v, a)                                           # (K, A)
    mask = torch.full_like(d, float("-inf"))
    for k, (target, lo, n) in enumerate(rows):
        j0, j1 = max(lo, target - max_offset), min(lo + n, target + max_offset + 1)
        mask[k, j0:j1] = 0.0
    logits = -d + mask
    targets = torch.tensor([r[0] for r in rows])
    return F.cross_entropy(logits, targets), logits, targets


@torch.inference_mode()
def evaluate_syncnet(model: Any, items: Sequence[CorpusItem], shifts: Sequence[int] = (0, SHIFT_FRAMES, -SHIFT_FRAMES)
                     ) -> dict[str, dict[str, float]]:
    """Mean LSE-C / LSE-D / offset over ``items`` (scored as :mod:`talkbench.lse`), per audio shift in frames."""
    model.eval()
    out = {}
    for shift in shifts:
        rs = [lse.lse_scores(model, it.frames, shift_audio(it.audio, shift)) for it in items]
        out[f"shift{shift:+d}"] = {"lse_c": float(np.mean([r.lse_c for r in rs])),
                                   "lse_d": float(np.mean([r.lse_d for r in rs])),
                                   "av_offset": float(np.mean([r.av_offset for r in rs])),
                                   "frac_offset_ok": float(np.mean([r.av_offset == -shift or
                                                                    abs(r.av_offset + shift) <= 1 for r in rs]))}
    return out


def train_syncnet(train: Sequence[CorpusItem], test: Sequence[CorpusItem], out_path: str | Path,
                  settings: SyncTrainSettings = SyncTrainSettings(), extra_meta: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Train a mini SyncNet on clips with ``frames``, evaluate on ``test``, save; returns the metadata."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_mini_syncnet(settings.width, settings.embed_dim)
    n_params = sum(p.numel() for p in model.parameters())
    prepared = [_sync_clip_tensors(it) for it in train]
    usable = [i for i, (_, n) in enumerate(prepared) if n > 2]
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1)
    logger.info("Mini SyncNet width %g: %d parameters, %d steps.", settings.width, n_params, settings.steps)
    started = time.perf_counter()
    history, run, acc_run, stopped_early, step = [], [], [], False, 0
    for step in range(1, settings.steps + 1):
        model.train()
        clips = rng.choice(usable, size=settings.clips_per_step, replace=False)
        videos, audios, rows = [], [], []
        a_off = 0
        for ci in clips:
            mfcc, n = prepared[ci]
            starts = np.sort(rng.choice(n, size=min(settings.windows_per_clip, n), replace=False))
            videos.append(_video_windows(train[ci].frames, starts))
            audios.append(mfcc)
            rows.extend((a_off + int(s), a_off, n) for s in starts)
            a_off += n
        loss, logits, targets = sync_loss(model, torch.cat(videos), torch.cat(audios), rows, settings.max_offset)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        run.append(float(loss.detach()))
        acc_run.append(float((logits.argmax(1) == targets).float().mean()))
        if step % 50 == 0 or step == settings.steps:
            minutes = (time.perf_counter() - started) / 60
            history.append({"step": step, "loss": float(np.mean(run)), "top1": float(np.mean(acc_run)),
                            "minutes": round(minutes, 2)})
            logger.info("step %d: loss %.3f, offset top-1 %.2f, %.1f min", step, np.mean(run), np.mean(acc_run), minutes)
            run, acc_run = [], []
        if settings.max_minutes and time.perf_counter() - started > 60 * settings.max_minutes:
            stopped_early = True
            break
    train_minutes = (time.perf_counter() - started) / 60
    scores = evaluate_syncnet(model, test)
    meta = {"kind": "mini-syncnet", "settings": dataclasses.asdict(settings), "n_params": n_params,
            "n_train_clips": len(train), "steps": step, "stopped_early": stopped_early,
            "train_minutes": round(train_minutes, 2), "torch": str(torch.__version__), "history": history,
            "test": scores, "n_test_clips": len(test), **(extra_meta or {})}
    save_mini_syncnet(model, out_path, meta)
    logger.info("Saved %s: %s (%.1f min).", out_path, scores, train_minutes)
    return meta


# ================================================================================== one-command entry points

#: The two lip readers shipped in talkbench/data/mini: B scores generators (the observer), A is the expert
#: that generators may train against; different seeds and different sizes keep them apart.
LIPREADER_VARIANTS: dict[str, tuple[LipReaderConfig, int]] = {
    "a": (LipReaderConfig(stem=12, mid=24, top=48, dim=96, layers=2, ffn=192, heads=4), 1),
    "b": (LipReaderConfig(), 0),
}


def lipreader_from_corpus(corpus_dir: str | Path, out_path: str | Path, variant: str = "b", seed: int | None = None,
                          epochs: int = 12, batch: int = 16, lr: float = 2e-3, max_minutes: float = 0.0,
                          threads: int = 2, n_train: int | None = None, cache_dir: str | Path | None = None
                          ) -> dict[str, Any]:
    """Read the corpus' train/test splits and train lip-reader ``variant`` (``a`` | ``b``); returns its metadata.

    ``cache_dir``: where to keep the decoded splits (``train.pkl``, ``test.pkl``) for other runs to reuse.

    Raises:
        ValueError: unknown variant.
    """
    if variant not in LIPREADER_VARIANTS:
        raise ValueError(f"Unknown lip-reader variant {variant!r}; choose from {sorted(LIPREADER_VARIANTS)}.")
    config, default_seed = LIPREADER_VARIANTS[variant]
    torch.set_num_threads(threads)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    train = read_split(corpus_dir, "train", n_train, cache=cache / "train.pkl" if cache and n_train is None else None)
    test = read_split(corpus_dir, "test", cache=cache / "test.pkl" if cache else None)
    settings = LipTrainSettings(seed=default_seed if seed is None else seed, epochs=epochs, batch=batch, lr=lr,
                                max_minutes=max_minutes, threads=threads)
    return train_lipreader(train, test, out_path, config, settings,
                           {"variant": variant, "corpus": _corpus_manifest(corpus_dir)})


def syncnet_from_corpus(corpus_dir: str | Path, out_path: str | Path, seed: int = 0, steps: int = 600,
                        width: float = 0.125, embed_dim: int = 128, n_train: int | None = 600, n_test: int = 50,
                        max_minutes: float = 0.0, threads: int = 2) -> dict[str, Any]:
    """Read ``n_train`` train clips (with frames) and ``n_test`` test clips and train a mini SyncNet."""
    torch.set_num_threads(threads)
    train = read_split(corpus_dir, "train", n_train, keep_frames=True)
    test = read_split(corpus_dir, "test", n_test, keep_frames=True)
    settings = SyncTrainSettings(seed=seed, steps=steps, width=width, embed_dim=embed_dim, max_minutes=max_minutes,
                                 threads=threads)
    return train_syncnet(train, test, out_path, settings, {"corpus": _corpus_manifest(corpus_dir)})


def _corpus_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    path = Path(corpus_dir) / "corpus.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text(encoding="utf-8"))
    return {k: m.get(k) for k in ("format", "format_version", "seed", "n_train", "n_test", "codec", "crf")}


__all__ = ["CorpusItem", "LIPREADER_VARIANTS", "LipTrainSettings", "SyncTrainSettings", "evaluate_lipreader",
           "evaluate_syncnet", "lipreader_from_corpus", "syncnet_from_corpus",
           "item_from_synth", "lipreader_loss", "read_split", "shift_audio", "sync_loss", "train_lipreader",
           "train_syncnet"]

"""Mini lip reader: shapes, determinism, checkpoint round trip, CTC decoding, a tiny training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkbench.nets import mini_lipreader as L
from talkbench.train import mini_observers as T

TINY = L.LipReaderConfig(stem=4, mid=8, top=8, dim=32, layers=1, ffn=32, heads=2, conv_pos=5, conv_pos_groups=4,
                         dropout=0.0)


def _crops(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, t, 88, 88), dtype=np.uint8))


def test_shapes_and_padding_mask():
    torch.manual_seed(0)
    model = L.MiniLipReader(TINY).eval()
    out = model(_crops(2, 12), torch.tensor([12, 7]))
    assert out["ctc"].shape == (2, 12, len(L.ALPHABET) + 1)
    assert out["viseme"].shape == (2, 12, L.N_VISEMES)
    assert out["mouth"].shape == (2, 12, L.N_MOUTH_PARAMS)
    # the shipped variants really differ in size (A = expert, B = observer)
    sizes = {v: sum(p.numel() for p in L.MiniLipReader(cfg).parameters()) for v, (cfg, _) in T.LIPREADER_VARIANTS.items()}
    assert sizes["a"] < sizes["b"] < 2_000_000


def test_deterministic_for_a_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = L.MiniLipReader(TINY).eval()
        outs.append(model(_crops(1, 10))["ctc"])
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(4)
    assert not torch.equal(outs[0], L.MiniLipReader(TINY).eval()(_crops(1, 10))["ctc"])


def test_checkpoint_round_trip_through_the_safe_loader(tmp_path):
    torch.manual_seed(0)
    model = L.MiniLipReader(TINY).eval()
    path = tmp_path / "lr.pt"
    L.save_lipreader(model, path, {"seed": 5})
    loaded, meta = L.load_lipreader(path)
    x = _crops(1, 9)
    assert meta == {"seed": 5}
    assert torch.equal(model(x)["ctc"], loaded(x)["ctc"])
    obj = torch.load(path, weights_only=True)
    del obj["state_dict"]["ctc.weight"]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing.*ctc.weight"):
        L.load_lipreader(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a talkbench-mini-lipreader"):
        L.load_lipreader(tmp_path / "other.pt")


def test_greedy_ctc_decoding_and_lexicon():
    ids = [0, 3, 3, 0, 3, 1, 1, 2, 0]            # b b _ b space space a  -> "bb a"
    lp = torch.full((len(ids), len(L.ALPHABET) + 1), -10.0)
    lp[torch.arange(len(ids)), torch.tensor(ids)] = -0.1
    text, score = L.greedy_decode(lp)
    assert text == "bb a"
    assert score == pytest.approx(-0.1)
    assert L.encode_text("BB  A") == [3, 3, 1, 2]
    assert L.snap_to_lexicon("bim bleu at", ("bin", "blue", "at", "red")) == "bin blue at"


def test_tiny_training_run_lowers_the_loss():
    from talkbench.synthetic.corpus import ClipSpec, make_clip

    items = [T.item_from_synth(make_clip(ClipSpec("train", i, 0, 4))) for i in range(2)]
    torch.manual_seed(0)
    model = L.MiniLipReader(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = T._lip_batch(items, np.random.default_rng(0), augment=False)
    losses = []
    for _ in range(12):
        loss, parts = T.lipreader_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(parts) == {"ctc", "viseme_ce", "mouth_mse"}
    assert losses[-1] < 0.8 * losses[0], losses

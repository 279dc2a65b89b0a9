"""``talkbench generate`` through Typer's CliRunner (single clip and the batch form)."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from talkbench import media
from talkbench.cli.generate import parse_reference_frame, register
from test_talklip_support import read_frames, read_wav, short_lrs2_folder, tiny_generator_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)

    @app.command("noop")       # a second command keeps Typer in multi-command mode, as in talkbench's app
    def noop() -> None:
        pass

    return app


def test_reference_frame_parsing():
    assert parse_reference_frame("0") == 0 and parse_reference_frame("same") is None
    with pytest.raises(typer.BadParameter):
        parse_reference_frame("first")


def test_cli_single_clip_and_batch(tmp_path, app):
    runner = CliRunner()
    ckpt = tiny_generator_file(tmp_path / "tiny.pth")
    media.write_clip(tmp_path / "face.mp4", read_frames("meeting", 10), read_wav("meeting")[:6400])
    np.save(tmp_path / "boxes.npy", np.tile([0, 0, 160, 160], (10, 1)))
    out = tmp_path / "out.mkv"
    res = runner.invoke(app, ["generate", "--video", str(tmp_path / "face.mp4"), "--out", str(out), "--checkpoint",
                              str(ckpt), "--boxes", str(tmp_path / "boxes.npy"), "--codec", "ffv1",
                              "--reference-frame", "2"])
    assert res.exit_code == 0, res.output
    assert media.decode_clip(out).num_frames == 10

    bad = runner.invoke(app, ["generate", "--video", str(tmp_path / "face.mp4"), "--out", str(tmp_path / "x.mp4"),
                              "--checkpoint", str(tmp_path / "missing.pth")])
    assert bad.exit_code == 2 and "missing.pth" in bad.output

    ref = tmp_path / "ref"
    ids = short_lrs2_folder(ref, n=8)
    res = runner.invoke(app, ["generate", "--suite", "lrs2", "--reference", str(ref), "--out", str(tmp_path / "gen"),
                              "--checkpoint", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert all((tmp_path / "gen" / f"{i}.mp4").is_file() for i in ids)
    assert "written 2" in res.output

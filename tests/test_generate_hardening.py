"""``talkbench generate`` refuses bad inputs up front with one ``error:`` paragraph (exit 2, no traceback).

Missing official checkpoints (offline), bad option values, output paths that cannot be written, non-finite
face boxes, and the hidden partial files a killed batch run leaves behind.
"""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
from typer.testing import CliRunner

from talkbench import generate as gen
from talkbench import media, weights
from talkbench.boxes import BoxError, check_boxes
from talkbench.cli import app
from talkbench.generate import GenerateConfig, GenerateError, generate_suite, suite_jobs, synthesize
from test_talklip_support import read_frames, read_wav, short_lrs2_folder, tiny_generator_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty cache and downloads that fail at once (a closed port on 127.0.0.1)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TALKBENCH_HOME", str(home))
    monkeypatch.delenv("TALKBENCH_WEIGHTS_MIRROR", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(weights, "candidate_urls", lambda card: [f"http://127.0.0.1:{port}/{card.file_name}"])
    return home


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if the generator is loaded or a video decoded (the checks must come first)."""
    calls: list[str] = []

    def forbidden(what):
        def call(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"{what} called before the inputs were checked")
        return call

    monkeypatch.setattr(gen, "load_generator", forbidden("load_generator"))
    monkeypatch.setattr(media, "decode_clip", forbidden("decode_clip"))
    return calls


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 10-frame face clip with its audio and full-frame boxes."""
    folder = tmp_path_factory.mktemp("clip")
    media.write_clip(folder / "face.mp4", read_frames("meeting", 10), read_wav("meeting")[:6400])
    np.save(folder / "boxes.npy", np.tile([0, 0, 160, 160], (10, 1)))
    return folder


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from talkbench.nets.talklip import load_talklip_generator

    path = tiny_generator_file(tmp_path_factory.mktemp("talklip") / "talklip_tiny.pth")
    return load_talklip_generator(path, attention_heads=4)


def assert_user_error(res, *fragments: str) -> str:
    """Exit 2, one ``error:`` paragraph containing ``fragments``, no traceback; returns the output."""
    out = res.output
    assert res.exit_code == 2, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "error:" in out and "Traceback" not in out, out
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    return out


def single(clip, out, *extra: str) -> list[str]:
    return ["generate", "--video", str(clip / "face.mp4"), "--boxes", str(clip / "boxes.npy"), "--out", str(out),
            *extra]


# ------------------------------------------------------------------------------------------------------
# 1. a missing official checkpoint, offline
# ------------------------------------------------------------------------------------------------------

def test_missing_official_checkpoint_is_one_error_paragraph_with_the_offline_hint(clip, tmp_path, offline):
    res = runner.invoke(app, single(clip, tmp_path / "y.mp4"))
    dest = weights.cache_path("talklip-gc")
    out = assert_user_error(res, "talklip-gc", str(dest), "--weights talklip-gc=PATH", "--checkpoint talklip-mini",
                            "--checkpoint PATH")
    assert str(dest).startswith(str(offline))
    assert not (tmp_path / "y.mp4").exists()
    assert out.count("error:") == 1


def test_batch_form_missing_checkpoint_stops_the_run_instead_of_failing_every_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights, "candidate_urls", lambda card: [])      # no URL: WeightsNotFoundError
    ref = tmp_path / "ref"
    short_lrs2_folder(ref, clips=("meeting",))
    with pytest.raises(weights.WeightsNotFoundError, match="--weights talklip-gc=PATH"):
        generate_suite(suite_jobs(ref, "lrs2"), tmp_path / "gen", GenerateConfig(checkpoint="talklip-gc"))


# ------------------------------------------------------------------------------------------------------
# 2. negative reference frames
# ------------------------------------------------------------------------------------------------------

def test_negative_reference_frame_is_refused(generator):
    frames = read_frames("meeting", 4)
    boxes = check_boxes(np.tile([0, 0, 160, 160], (4, 1)), 4, (160, 160))
    audio = read_wav("meeting")[:4 * 640]
    with pytest.raises(GenerateError, match=r"--reference-frame -1.*0 or more"):
        synthesize(generator, frames, boxes, audio, reference_frame=-1)
    with pytest.raises(GenerateError, match=r"--reference-frame 4 .*within 0\.\.3"):
        synthesize(generator, frames, boxes, audio, reference_frame=4)
    with pytest.raises(GenerateError, match="--batch-size 0"):
        synthesize(generator, frames, boxes, audio, batch_size=0)


def test_cli_negative_reference_frame_before_loading(clip, tmp_path, no_heavy_work):
    res = runner.invoke(app, single(clip, tmp_path / "y.mp4", "--reference-frame", "-1"))
    assert_user_error(res, "--reference-frame -1")
    assert no_heavy_work == []


# ------------------------------------------------------------------------------------------------------
# 3. NaN / infinite boxes
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_boxes_are_refused_with_file_and_frame(bad):
    boxes = np.tile([10.0, 10.0, 90.0, 90.0], (5, 1))
    boxes[2, 0] = bad
    boxes[4, 1] = bad
    with pytest.raises(BoxError, match=r"clip7\.npy: the face box of frame 2 .*2 such frames"):
        check_boxes(boxes, 5, (100, 100), "clip7.npy")


def test_cli_nan_boxes_file_is_an_error(clip, tmp_path):
    boxes = np.tile([0.0, 0.0, 160.0, 160.0], (10, 1))
    boxes[3, 0] = np.nan          # was clipped to 0 silently: a full-width box
    np.save(tmp_path / "nan.npy", boxes)
    ckpt = tiny_generator_file(tmp_path / "tiny.pth")
    res = runner.invoke(app, ["generate", "--video", str(clip / "face.mp4"), "--boxes", str(tmp_path / "nan.npy"),
                              "--out", str(tmp_path / "y.mp4"), "--checkpoint", str(ckpt)])
    assert_user_error(res, str(tmp_path / "nan.npy"), "frame 3")
    assert not (tmp_path / "y.mp4").exists()


# ------------------------------------------------------------------------------------------------------
# 4. stale partial files of a killed batch run
# ------------------------------------------------------------------------------------------------------

def test_batch_form_removes_stale_part_files_of_its_targets_only(tmp_path, generator, caplog):
    ref, out = tmp_path / "ref", tmp_path / "gen"
    short_lrs2_folder(ref)
    jobs = suite_jobs(ref, "lrs2")
    assert [j.clip_id for j in jobs] == ["main/spk0/00001", "main/spk1/00001"]
    done = out / "main/spk0/00001.mp4"           # a finished output: skipped, its stale part removed too
    done.parent.mkdir(parents=True)
    done.write_bytes(b"finished")
    stale = [out / "main/spk0/.00001.mp4.k3_x9q2a.part", out / "main/spk1/.00001.mp4.abcdefgh.part",
             out / "main/spk1/.00001.mp4.zz.part"]
    kept = [out / "main/spk1/.00002.mp4.abcdefgh.part",      # another clip's name
            out / "main/spk1/00001.mp4.abcdefgh.part",       # not hidden
            out / "main/spk1/.00001.mp4.part",               # no random part
            out / "main/spk1/.00001.mkv.abcdefgh.part",      # another codec's target
            out / "main/.00001.mp4.abcdefgh.part",           # another folder
            out / "main/spk1/notes.txt"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="talkbench.generate"):
        result = generate_suite(jobs, out, generator=generator)
    assert result.skipped == ["main/spk0/00001"] and result.written == ["main/spk1/00001"], result.failed
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert "removed 3 stale partial file(s)" in caplog.text
    assert media.decode_clip(out / "main/spk1/00001.mp4").num_frames > 0


def test_remove_stale_parts_counts_and_ignores_missing_folders(tmp_path):
    (tmp_path / ".a.mp4.12345678.part").write_bytes(b"x")
    (tmp_path / ".a.mp4.12345678.part.keep").write_bytes(b"x")
    assert gen.remove_stale_parts([tmp_path / "a.mp4", tmp_path / "missing" / "b.mp4"]) == 1
    assert gen.remove_stale_parts([tmp_path / "a.mp4"]) == 0
    assert (tmp_path / ".a.mp4.12345678.part.keep").exists()


# ------------------------------------------------------------------------------------------------------
# 5. output paths checked before the model is loaded
# ------------------------------------------------------------------------------------------------------

def test_single_clip_out_that_is_a_folder_is_refused_before_loading(clip, tmp_path, no_heavy_work):
    folder = tmp_path / "outdir"
    folder.mkdir()
    res = runner.invoke(app, single(clip, folder))
    assert_user_error(res, str(folder), "is a folder", "--reference/--suite")
    assert no_heavy_work == []


def test_extension_must_fit_the_codec_before_loading(clip, tmp_path, no_heavy_work):
    res = runner.invoke(app, single(clip, tmp_path / "x.mp4", "--codec", "ffv1"))
    assert_user_error(res, str(tmp_path / "x.mp4"), "ffv1", ".mkv", "--codec")
    res = runner.invoke(app, single(clip, tmp_path / "x.mkv", "--codec", "ffv1", "--crf", "20"))
    assert_user_error(res, "--crf", "h264 only")
    res = runner.invoke(app, single(clip, tmp_path / "x.mp4", "--codec", "vp9"))
    assert_user_error(res, "--codec 'vp9'", "h264", "ffv1")
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    res = runner.invoke(app, single(clip, blocker / "sub" / "x.mp4"))
    assert_user_error(res, str(blocker), "is a file, not a folder")
    assert no_heavy_work == []


def test_batch_out_that_is_an_existing_file_is_refused_before_loading(tmp_path, no_heavy_work):
    ref = tmp_path / "ref"
    short_lrs2_folder(ref, clips=("meeting",))
    existing = tmp_path / "gen.mp4"
    existing.write_bytes(b"a video")
    res = runner.invoke(app, ["generate", "--suite", "lrs2", "--reference", str(ref), "--out", str(existing)])
    assert_user_error(res, str(existing), "existing file", "folder")
    assert no_heavy_work == []
    with pytest.raises(GenerateError, match="existing file"):
        generate_suite(suite_jobs(ref, "lrs2"), existing, generator=object())
    assert existing.read_bytes() == b"a video"


def test_output_checks_as_library_functions(tmp_path):
    assert gen.check_output_file(tmp_path / "a.MKV", "ffv1") == tmp_path / "a.MKV"
    assert gen.codec_extensions("ffv1") == (".mkv", ".avi")
    with pytest.raises(GenerateError, match="libx264's CRF runs from 0"):
        gen.check_output_file(tmp_path / "a.mp4", "h264", crf=60)
    assert gen.check_output_dir(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"


# ------------------------------------------------------------------------------------------------------
# 6-8. batch size, device, detector and weights
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["0", "-4"])
def test_non_positive_batch_size_is_refused_up_front(clip, tmp_path, no_heavy_work, size):
    res = runner.invoke(app, single(clip, tmp_path / "y.mp4", "--batch-size", size))
    assert_user_error(res, f"--batch-size {size}", "positive")
    assert no_heavy_work == []


def test_bogus_device_is_refused_up_front(clip, tmp_path, no_heavy_work):
    res = runner.invoke(app, single(clip, tmp_path / "y.mp4", "--device", "bogus"))
    assert_user_error(res, "--device", "bogus", "cpu")
    assert no_heavy_work == []


def test_unknown_detector_is_an_error(clip, tmp_path, no_heavy_work):
    res = runner.invoke(app, ["generate", "--video", str(clip / "face.mp4"), "--out", str(tmp_path / "y.mp4"),
                              "--detector", "mtcnn"])
    assert_user_error(res, "--detector 'mtcnn'", "dlib", "s3fd")
    assert no_heavy_work == []


def test_missing_s3fd_weights_file_is_an_error(clip, tmp_path, no_heavy_work):
    missing = tmp_path / "nowhere" / "sfd_face.pth"
    res = runner.invoke(app, ["generate", "--video", str(clip / "face.mp4"), "--out", str(tmp_path / "y.mp4"),
                              "--weights", f"s3fd={missing}"])
    assert_user_error(res, "s3fd", str(missing))
    assert no_heavy_work == []


def test_unknown_weights_card_is_an_error_with_the_close_match(clip, tmp_path, no_heavy_work):
    local = tmp_path / "talklip_gc.pth"
    local.write_bytes(b"weights")
    res = runner.invoke(app, single(clip, tmp_path / "y.mp4", "--weights", f"talklip-gcc={local}"))
    assert_user_error(res, "talklip-gcc", "talklip-gc")
    assert no_heavy_work == []

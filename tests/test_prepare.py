"""``talkbench prepare``: in-the-wild videos → an LRS2-style suite (160×160 face-centred 25 fps clips, 16 kHz mono
audio, ``<id>.npy`` boxes, transcripts carried over), clip errors listed, nothing written outside OUT_DIR."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from talkbench import media, suites, tracks
from talkbench.boxes import check_boxes
from talkbench.prepare import MANIFEST, PrepareConfig, PrepareError, check_folders, prepare_folder

REAL_CUT = FIXTURES / "media" / "syncnet_example_cut.avi"      # 976×528 MPEG-4 + 44.1 kHz MP3, 80 frames
MEETING = FIXTURES / "media" / "meeting.mp4"                   # 160×160 H.264 + AAC, 73 frames


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """An input folder (a real clip in a sub-folder, a 160×160 clip, a broken file, transcripts.csv), prepared."""
    root = tmp_path_factory.mktemp("prepare")
    in_dir, out_dir = root / "videos", root / "suite"
    (in_dir / "real").mkdir(parents=True)
    shutil.copyfile(REAL_CUT, in_dir / "real" / "guitar.avi")
    shutil.copyfile(MEETING, in_dir / "meeting.mp4")
    (in_dir / "broken.mp4").write_bytes(b"not a video at all")
    (in_dir / "real" / "guitar.txt").write_text("Text:  SOME WORDS\n")
    (in_dir / "transcripts.csv").write_text("path,text\nmeeting.mp4,THE MEETING ABOUT THE MEDIA STARTS AT NINE\n"
                                            "real/guitar.avi,SOME WORDS\n")
    result = prepare_folder(in_dir, out_dir)
    return in_dir, out_dir, result


def test_every_clip_becomes_an_lrs2_style_clip_and_a_broken_one_is_listed(prepared):
    in_dir, out_dir, result = prepared
    assert sorted(c.clip_id for c in result.prepared) == ["meeting", "real/guitar"]
    assert list(result.failed) == ["broken"] and "broken.mp4" in result.failed["broken"]
    for clip_id, n_source in (("meeting", 73), ("real/guitar", 80)):
        clip = media.decode_clip(out_dir / f"{clip_id}.mp4")
        assert clip.frames.shape[1:] == (160, 160, 3) and clip.fps == 25.0
        assert clip.num_frames == n_source                                  # both sources are 25 fps
        assert clip.audio_int16 is not None and abs(len(clip.audio_int16) - n_source * 640) < 2048
        boxes = np.load(out_dir / f"{clip_id}.npy")
        assert boxes.dtype == np.int64 and boxes.shape == (n_source, 4)
        check_boxes(boxes, n_source, (160, 160))                          # the format suites and crops accept
    manifest = json.loads((out_dir / MANIFEST).read_text())
    assert manifest["failed"] == ["broken"] and "error" in manifest["clips"]["broken"]
    assert manifest["clips"]["real/guitar"]["source_size"] == [976, 528]
    assert manifest["settings"]["size"] == 160 and manifest["settings"]["track"]["max_side"] == tracks.MAX_SIDE


def test_transcripts_are_carried_over_and_the_suite_loads(prepared):
    _, out_dir, _ = prepared
    rows = dict(suites.read_transcripts_csv(out_dir / "transcripts.csv"))
    assert rows == {"meeting.mp4": "THE MEETING ABOUT THE MEDIA STARTS AT NINE", "real/guitar.mp4": "SOME WORDS"}
    assert (out_dir / "real" / "guitar.txt").read_text().startswith("Text:  SOME WORDS")
    suite = suites.load_suite("auto", out_dir, out_dir)
    by_id = {p.clip_id: p for p in suite.pairs}
    assert set(by_id) == {"meeting", "real/guitar"}
    assert by_id["real/guitar"].text == "SOME WORDS" and by_id["real/guitar"].boxes is not None


def test_prepared_crops_land_on_the_face(prepared):
    # dlib's 68 landmarks on the prepared real clip: the face centre sits near the 160×160 centre, inside the boxes
    from talkbench.faces import dlib_landmarks

    _, out_dir, _ = prepared
    frames = media.decode_clip(out_dir / "real" / "guitar.mp4").frames[::2]
    boxes = np.load(out_dir / "real" / "guitar.npy")[::2]
    marks = dlib_landmarks(frames, upsample=1, cnn_fallback=False)
    found = [(m.mean(axis=0), b) for m, b in zip(marks, boxes) if m is not None]
    assert len(found) >= 5, "dlib should mark the face on some prepared frames"
    centres = np.array([c for c, _ in found])
    assert np.abs(centres.mean(axis=0) - 80.0).max() < 12.0, centres.mean(axis=0)
    assert np.abs(centres - 80.0).max() < 30.0
    inside = [b[0] <= c[0] <= b[2] and b[1] <= c[1] <= b[3] for c, b in found]
    assert np.mean(inside) >= 0.8


def test_a_rerun_skips_what_is_done_and_other_settings_redo_it(prepared, tmp_path):
    in_dir, out_dir, _ = prepared
    work = tmp_path / "suite"
    shutil.copytree(out_dir, work)
    (in_dir.parent / "only").mkdir(exist_ok=True)
    shutil.copyfile(MEETING, in_dir.parent / "only" / "meeting.mp4")
    again = prepare_folder(in_dir.parent / "only", work)
    assert again.skipped == ["meeting"] and not again.prepared
    smaller = prepare_folder(in_dir.parent / "only", work, PrepareConfig(size=96))
    assert [c.clip_id for c in smaller.prepared] == ["meeting"]
    assert media.decode_clip(work / "meeting.mp4").frames.shape[1:3] == (96, 96)


def test_track_from_cuts_a_clip_by_its_reference_track(prepared, tmp_path):
    # a "generated" version of the real clip (same framing, other pixels) is cut into the reference's squares
    in_dir, out_dir, _ = prepared
    generated = tmp_path / "generated" / "real"
    generated.mkdir(parents=True)
    clip = media.decode_clip(REAL_CUT)
    media.write_clip(generated / "guitar.mp4", (clip.frames[:70] // 2).astype(np.uint8), clip.audio_int16)
    result = prepare_folder(tmp_path / "generated", tmp_path / "gen_suite", track_from=in_dir)
    assert [c.clip_id for c in result.prepared] == ["real/guitar"] and not result.failed
    boxes = np.load(tmp_path / "gen_suite" / "real" / "guitar.npy")
    assert np.array_equal(boxes, np.load(out_dir / "real" / "guitar.npy")[:70])
    half = media.decode_clip(tmp_path / "gen_suite" / "real" / "guitar.mp4").frames.astype(int)
    full = media.decode_clip(out_dir / "real" / "guitar.mp4").frames[:70].astype(int)
    assert abs(np.mean(full / 2.0 - half)) < 4.0               # the same squares, at half the brightness
    small = tmp_path / "small"
    (small / "real").mkdir(parents=True)
    shutil.copyfile(MEETING, small / "real" / "guitar.mp4")     # 160×160 against its 976×528 namesake
    shutil.copyfile(MEETING, small / "alone.mp4")               # no namesake
    other = prepare_folder(small, tmp_path / "small_suite", track_from=in_dir)
    assert sorted(other.failed) == ["alone", "real/guitar"]
    assert "no video alone" in other.failed["alone"] and "same frame size" in other.failed["real/guitar"]


def test_other_frame_rates_become_25_fps_as_decode_clip_makes_them(tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    clip = media.decode_clip(MEETING)
    media.write_clip(in_dir / "fast.mp4", clip.frames[:30], clip.audio_int16[:30 * 533], fps=30.0)   # 1 s at 30 fps
    result = prepare_folder(in_dir, tmp_path / "out")
    assert result.prepared[0].source_fps == 30.0
    prepared = media.decode_clip(tmp_path / "out" / "fast.mp4")
    assert prepared.fps == 25.0 and prepared.num_frames == media.decode_clip(in_dir / "fast.mp4").num_frames < 30
    assert len(np.load(tmp_path / "out" / "fast.npy")) == prepared.num_frames


def test_an_upscaled_full_frame_copy_is_prepared_into_nearly_the_same_clip(tmp_path):
    # meeting (160×160) upscaled 4× into a 1280×720 frame at x=200: the two prepared clips show the same face,
    # shifted by a few pixels at most (dlib's boxes depend a little on the resolution they are found at)
    import cv2

    clip = media.decode_clip(MEETING)
    big = np.full((len(clip.frames), 720, 1280, 3), 128, dtype=np.uint8)
    for t, frame in enumerate(clip.frames):
        big[t, :640, 200:840] = cv2.resize(frame, (640, 640), interpolation=cv2.INTER_CUBIC)
    (tmp_path / "small").mkdir()
    (tmp_path / "big").mkdir()
    shutil.copyfile(MEETING, tmp_path / "small" / "meeting.mp4")
    media.write_clip(tmp_path / "big" / "meeting.mp4", big, clip.audio_int16, crf=18)
    del big
    prepare_folder(tmp_path / "small", tmp_path / "small_out")
    prepare_folder(tmp_path / "big", tmp_path / "big_out")
    a = media.decode_clip(tmp_path / "small_out" / "meeting.mp4").frames
    b = media.decode_clip(tmp_path / "big_out" / "meeting.mp4").frames
    assert a.shape == b.shape
    from talkbench.faces import dlib_landmarks

    marks = [[m for m in dlib_landmarks(x[::8], upsample=1, cnn_fallback=False) if m is not None] for x in (a, b)]
    assert min(len(m) for m in marks) >= 5
    centre = [np.mean([m.mean(axis=0) for m in ms], axis=0) for ms in marks]
    eyes = [np.mean([np.linalg.norm(m[36:42].mean(0) - m[42:48].mean(0)) for m in ms]) for ms in marks]
    assert np.linalg.norm(centre[0] - centre[1]) < 6.0, centre              # the face within 6 px of the other
    assert abs(eyes[1] / eyes[0] - 1.0) < 0.08, eyes                         # and at the same scale (8 %)


def test_output_stays_inside_out_dir(tmp_path):
    in_dir = tmp_path / "in"
    (in_dir / "sub").mkdir(parents=True)
    shutil.copyfile(MEETING, in_dir / "sub" / "meeting.mp4")
    with pytest.raises(PrepareError, match="overlaps"):
        check_folders(in_dir, in_dir / "prepared")
    with pytest.raises(PrepareError, match="overlaps"):
        check_folders(in_dir, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sub").symlink_to(elsewhere, target_is_directory=True)       # a link out of OUT_DIR
    result = prepare_folder(in_dir, out_dir)
    assert list(result.failed) == ["sub/meeting"] and "outside" in result.failed["sub/meeting"]
    assert not list(elsewhere.iterdir())


def test_bad_settings_are_refused_before_any_video_is_read(tmp_path):
    for config, fragment in ((PrepareConfig(size=161), "--size"), (PrepareConfig(scale=9.0), "--scale"),
                             (PrepareConfig(codec="vp9"), "--codec"),
                             (PrepareConfig(track=tracks.TrackSettings(detector="s3fd")), "s3fd")):
        with pytest.raises(PrepareError, match=fragment):
            prepare_folder(tmp_path / "missing", tmp_path / "out", config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="no video"):
        prepare_folder(tmp_path / "empty", tmp_path / "out")


def test_cli_lists_the_failed_clip_and_exits_1(prepared, tmp_path):
    from typer.testing import CliRunner

    from talkbench.cli import app

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copyfile(MEETING, in_dir / "meeting.mp4")
    (in_dir / "bad.mp4").write_bytes(b"junk")
    res = CliRunner().invoke(app, ["prepare", str(in_dir), str(tmp_path / "out"), "--size", "96"])
    assert res.exit_code == 1, res.output
    assert "prepared 1" in res.output and "failed bad" in res.output
    assert (tmp_path / "out" / "meeting.mp4").is_file() and (tmp_path / "out" / "meeting.npy").is_file()
    res = CliRunner().invoke(app, ["prepare", str(in_dir), str(tmp_path / "out2"), "--scale", "0"])
    assert res.exit_code == 2 and "--scale" in res.output and "Traceback" not in res.output

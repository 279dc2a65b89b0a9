"""talkbench.suites: layouts, pairing by relative path, unmatched/missing clips, filelists, boxes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from talkbench.suites import (ClipPair, detect_suite_kind, load_boxes, load_suite, lrw_labels, read_filelist,
                              read_lrs2_text, suite_settings)


def touch(path: Path, text: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else "")
    return path


@pytest.fixture
def lrs2(tmp_path):
    """LRS2-like reference (main/<spk>/<utt>.mp4 + .txt) and generated clips with one missing, one extra."""
    ref = tmp_path / "ref"
    for utt, words in [("spk1/00001", "HELLO WORLD"), ("spk1/00002", "IT'S A TEST"), ("spk2/00001", "GOOD NIGHT")]:
        touch(ref / "main" / f"{utt}.mp4")
        touch(ref / "main" / f"{utt}.txt", f"Text:  {words}\nConf:  4\n\nWORD START END ASDSCORE\n")
    np.save(ref / "main" / "spk1" / "00001.npy", np.zeros((3, 4), np.int64))
    gen = tmp_path / "gen"
    touch(gen / "main" / "spk1" / "00001.mp4")
    touch(gen / "main" / "spk2" / "00001.avi")  # any video extension matches
    touch(gen / "main" / "spk9" / "00007.mp4")  # matches nothing
    touch(gen / "main" / "spk1" / ".00002.mp4.part")  # hidden temporary: ignored
    return ref, gen


def test_lrs2_pairing(lrs2, caplog):
    ref, gen = lrs2
    with caplog.at_level(logging.WARNING, logger="talkbench.suites"):
        suite = load_suite("lrs2", gen, ref)
    assert suite.kind == "lrs2"
    assert [p.clip_id for p in suite.pairs] == ["main/spk1/00001", "main/spk1/00002", "main/spk2/00001"]
    first, second, third = suite.pairs
    assert first == ClipPair("main/spk1/00001", gen / "main/spk1/00001.mp4", ref / "main/spk1/00001.mp4",
                             "HELLO WORLD", ref / "main/spk1/00001.npy")
    assert second.generated is None and second.text == "IT'S A TEST" and second.boxes is None
    assert third.generated == gen / "main/spk2/00001.avi"
    assert suite.missing_generated == ["main/spk1/00002"]
    assert suite.unmatched_generated == ["main/spk9/00007"]
    assert "1 generated clip(s) match no reference clip or transcript (first: main/spk9/00007)" in caplog.text
    assert "1 reference clip(s) have no generated clip (first: main/spk1/00002)" in caplog.text


def test_lrs2_without_reference_reads_text_beside_generated(tmp_path):
    gen = tmp_path / "gen"
    touch(gen / "a.mp4")
    touch(gen / "a.txt", "Text:  ONE TWO\n")
    touch(gen / "b.mp4")
    suite = load_suite("auto", gen, None)
    assert suite.kind == "lrs2"
    assert [(p.clip_id, p.reference, p.text) for p in suite.pairs] == [("a", None, "ONE TWO"), ("b", None, None)]
    assert suite.unmatched_generated == [] and suite.missing_generated == []


def test_boxes_dir_takes_priority(lrs2, tmp_path):
    ref, gen = lrs2
    boxes = tmp_path / "bbx"
    (boxes / "main/spk2").mkdir(parents=True)
    np.save(boxes / "main/spk2/00001.npy", np.zeros((2, 4), np.int64))
    suite = load_suite("lrs2", gen, ref, boxes_dir=boxes)
    by_id = {p.clip_id: p for p in suite.pairs}
    assert by_id["main/spk2/00001"].boxes == boxes / "main/spk2/00001.npy"
    assert by_id["main/spk1/00001"].boxes is None  # the boxes folder replaces the files beside the clips


def test_read_lrs2_text(tmp_path):
    assert read_lrs2_text(touch(tmp_path / "a.txt", "Text:  WHEN YOU'RE COOKING\nConf: 3\n")) == "WHEN YOU'RE COOKING"
    assert read_lrs2_text(touch(tmp_path / "b.txt", "ABOUT\n")) == "ABOUT"  # bare words, as the sample clips


@pytest.fixture
def lrw(tmp_path):
    ref = tmp_path / "lrw"
    for word in ["ABOUT", "ACCESS", "AFTER"]:
        for split in ["test", "train"]:
            touch(ref / word / split / f"{word}_00001.mp4")
            touch(ref / word / split / f"{word}_00001.txt", f"Text: {word}\n")  # LRW ships these too
    gen = tmp_path / "gen"
    touch(gen / "ABOUT/test/ABOUT_00001.mp4")
    touch(gen / "AFTER/test/AFTER_00001.mp4")
    return ref, gen


def test_lrw_pairing_and_labels(lrw):
    ref, gen = lrw
    suite = load_suite("lrw", gen, ref)
    assert [(p.clip_id, p.text) for p in suite.pairs] == [("ABOUT/test/ABOUT_00001", "ABOUT"),
                                                          ("ACCESS/test/ACCESS_00001", "ACCESS"),
                                                          ("AFTER/test/AFTER_00001", "AFTER")]
    assert suite.labels == ["ABOUT", "ACCESS", "AFTER"] == lrw_labels(ref)
    assert suite.missing_generated == ["ACCESS/test/ACCESS_00001"]
    assert len(load_suite("lrw", gen, ref, lrw_split="train").pairs) == 3


def test_detect_suite_kind(lrs2, lrw, tmp_path):
    assert detect_suite_kind(lrs2[0]) == "lrs2"
    assert detect_suite_kind(lrw[0]) == "lrw"  # LRW's own .txt files do not make it LRS2
    touch(tmp_path / "lrwonly/ABOUT/test/ABOUT_00001.mp4")
    assert detect_suite_kind(tmp_path / "lrwonly") == "lrw"
    touch(tmp_path / "plain/clip1.mp4")
    assert detect_suite_kind(tmp_path / "plain") == "folder"
    touch(tmp_path / "plain/transcripts.csv", "path,text\nclip1.mp4,hello\n")
    assert detect_suite_kind(tmp_path / "plain") == "folder"
    with pytest.raises(ValueError, match="folder not found"):
        detect_suite_kind(tmp_path / "nothing")


def test_folder_with_transcripts_csv(tmp_path):
    ref = tmp_path / "ref"
    touch(ref / "a/one.mp4")
    touch(ref / "two.mkv")
    touch(ref / "transcripts.csv", 'path,text\na/one.mp4,"Hello, world"\ntwo,ABOUT\nthree.mp4,missing clip\n')
    gen = tmp_path / "gen"
    touch(gen / "a/one.mov")
    touch(gen / "two.mp4")
    touch(gen / "extra.mp4")
    suite = load_suite("auto", gen, ref)
    assert suite.kind == "folder"
    assert [(p.clip_id, p.text) for p in suite.pairs] == [("a/one", "Hello, world"), ("three", "missing clip"),
                                                          ("two", "ABOUT")]
    assert suite.pairs[2].reference == ref / "two.mkv"
    assert suite.missing_reference == ["three"] and suite.pairs[1].reference is None
    assert suite.unmatched_generated == ["extra"] and suite.missing_generated == ["three"]


def test_folder_without_csv_and_without_reference(tmp_path):
    gen = tmp_path / "gen"
    touch(gen / "x.mp4")
    touch(gen / "transcripts.csv", "path,text\nx.mp4,some words\n")
    suite = load_suite("folder", gen, None)
    assert [(p.clip_id, p.generated, p.reference, p.text) for p in suite.pairs] == [("x", gen / "x.mp4", None,
                                                                                     "some words")]
    touch(tmp_path / "plain/y.avi")
    plain = load_suite("folder", tmp_path / "plain", None)
    assert [(p.clip_id, p.text) for p in plain.pairs] == [("y", None)]


def test_folder_csv_errors(tmp_path):
    touch(tmp_path / "bad/transcripts.csv", "file,words\na.mp4,x\n")
    with pytest.raises(ValueError, match="columns `path,text`"):
        load_suite("folder", tmp_path / "bad", None)
    touch(tmp_path / "twice/transcripts.csv", "path,text\na.mp4,x\na.avi,y\n")
    with pytest.raises(ValueError, match="listed twice"):
        load_suite("folder", tmp_path / "twice", None)
    touch(tmp_path / "escape/transcripts.csv", "path,text\n../a.mp4,x\n")
    with pytest.raises(ValueError, match="must be relative"):
        load_suite("folder", tmp_path / "escape", None)


def test_talklip_filelist_txt_lrs2(lrs2, tmp_path):
    ref, gen = lrs2
    filelist = touch(tmp_path / "test.txt", "spk1/00001 NF\nspk2/00001 MV\nspk3/00009 NF\n\n")
    main = ref / "main"
    suite = load_suite("auto", gen / "main", main, filelist)
    assert suite.kind == "talklip-filelist"
    assert [(p.clip_id, p.text) for p in suite.pairs] == [("spk1/00001", "HELLO WORLD"), ("spk2/00001", "GOOD NIGHT"),
                                                          ("spk3/00009", None)]
    assert suite.pairs[0].boxes == main / "spk1/00001.npy"
    assert suite.missing_reference == ["spk3/00009"]
    assert suite.unmatched_generated == ["spk9/00007"]
    assert load_suite("lrs2", gen / "main", main, filelist).kind == "talklip-filelist"


def test_talklip_filelist_lrw_ids(lrw, tmp_path):
    ref, gen = lrw
    filelist = touch(tmp_path / "lrw_test.txt", "AFTER/test/AFTER_00001\nABOUT/test/ABOUT_00001\n")
    suite = load_suite("talklip-filelist", gen, None, filelist)
    assert [(p.clip_id, p.text) for p in suite.pairs] == [("ABOUT/test/ABOUT_00001", "ABOUT"),
                                                          ("AFTER/test/AFTER_00001", "AFTER")]


def test_avhubert_tsv_and_wrd(tmp_path):
    """TalkLip ships datalist/test_partial.tsv (root line, then id, frames, samples) with test.wrd."""
    touch(tmp_path / "test_partial.tsv", "/\t\t\nspk1/00006\t58\t38912\nspk2/00007\t47\t31744\n")
    touch(tmp_path / "test.wrd", "i am the ultimate power\nit's the internet\n")
    rows = [("spk1/00006", "i am the ultimate power"), ("spk2/00007", "it's the internet")]
    assert read_filelist(tmp_path / "test_partial.tsv") == rows
    assert read_filelist(tmp_path / "test.wrd") == rows  # the .wrd finds its _partial.tsv
    touch(tmp_path / "short.tsv", "/\nspk1/00006\t58\t38912\nspk2/00007\t47\t31744\n")
    touch(tmp_path / "short.wrd", "only one line\n")
    with pytest.raises(ValueError, match="1 transcripts for 2 clips"):
        read_filelist(tmp_path / "short.tsv")
    touch(tmp_path / "alone.wrd", "words\n")
    with pytest.raises(ValueError, match="no AV-HuBERT manifest beside it"):
        read_filelist(tmp_path / "alone.wrd")
    with pytest.raises(ValueError, match="filelist not found"):
        read_filelist(tmp_path / "absent.txt")


def test_load_suite_errors(lrs2, tmp_path):
    ref, gen = lrs2
    with pytest.raises(ValueError, match="Unknown suite kind 'voxceleb'"):
        load_suite("voxceleb", gen, ref)
    with pytest.raises(ValueError, match="generated-clips folder not found"):
        load_suite("lrs2", tmp_path / "missing", ref)
    with pytest.raises(ValueError, match="reference folder not found"):
        load_suite("lrs2", gen, tmp_path / "missing")
    with pytest.raises(ValueError, match="needs a filelist"):
        load_suite("talklip-filelist", gen, ref)
    with pytest.raises(ValueError, match="takes no filelist"):
        load_suite("folder", gen, ref, touch(tmp_path / "list.txt", "a\n"))


def test_ambiguous_extensions_prefer_mp4(tmp_path, caplog):
    touch(tmp_path / "gen/a.avi")
    touch(tmp_path / "gen/a.mp4")
    with caplog.at_level(logging.WARNING, logger="talkbench.suites"):
        suite = load_suite("folder", tmp_path / "gen", None)
    assert [p.generated.name for p in suite.pairs] == ["a.mp4"]
    assert "several video files for one clip" in caplog.text


def test_load_boxes(tmp_path):
    np.save(tmp_path / "ok.npy", np.array([[1, 2, 30, 40], [2, 3, 31, 41]], dtype=np.int32))
    boxes = load_boxes(tmp_path / "ok.npy", n_frames=2)
    assert boxes.dtype == np.int64 and boxes.tolist() == [[1, 2, 30, 40], [2, 3, 31, 41]]
    np.save(tmp_path / "float.npy", np.array([[1.0, 2.0, 30.0, 40.0]]))
    assert load_boxes(tmp_path / "float.npy").tolist() == [[1, 2, 30, 40]]
    for name, array, message in [("shape", np.zeros((3, 5)), "must be T×4"),
                                 ("frac", np.array([[1.5, 2, 3, 4]]), "whole pixel coordinates"),
                                 ("neg", np.array([[-1, 2, 3, 4]]), "negative coordinates")]:
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(ValueError, match=message):
            load_boxes(tmp_path / f"{name}.npy")
    with pytest.raises(ValueError, match="2 face boxes for 5 frames"):
        load_boxes(tmp_path / "ok.npy", n_frames=5)
    with pytest.raises(ValueError, match="cannot read face boxes"):
        load_boxes(touch(tmp_path / "text.npy", "not numpy"))


# --------------------------------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------------------------------

def test_transcripts_csv_that_is_not_utf8_names_file_line_and_fix(tmp_path):
    folder = tmp_path / "latin1"
    touch(folder / "a.mp4")
    (folder / "transcripts.csv").write_bytes("path,text\na.mp4,hello\nb.mp4,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"transcripts\.csv: line 3 is not valid UTF-8.*re-save the file as UTF-8"):
        load_suite("folder", folder, None)


def test_transcripts_csv_with_a_bom_is_read(tmp_path):
    folder = tmp_path / "bom"
    touch(folder / "a.mp4")
    (folder / "transcripts.csv").write_bytes("\ufeffpath,text\na.mp4,caf\u00e9\n".encode("utf-8"))
    assert [(p.clip_id, p.text) for p in load_suite("folder", folder, None).pairs] == [("a", "caf\u00e9")]


def test_undecodable_lrs2_transcript_fails_only_its_clip(lrs2, caplog):
    ref, gen = lrs2
    bad = ref / "main/spk1/00002.txt"
    bad.write_bytes(b"Text:  CAF\xc9 AU LAIT\n")
    (ref / "main/spk2/00001.txt").write_bytes("\ufeffText:  GOOD NIGHT\n".encode("utf-8"))  # BOM: fine
    with caplog.at_level(logging.WARNING, logger="talkbench.suites"):
        suite = load_suite("lrs2", gen, ref)
    by_id = {p.clip_id: p for p in suite.pairs}
    broken = by_id["main/spk1/00002"]
    assert broken.text is None
    assert broken.error.startswith(f"{bad}: line 1 is not valid UTF-8 (byte 0xc9 at column 11)")
    assert "re-save the file as UTF-8" in broken.error
    assert by_id["main/spk1/00001"].error is None and by_id["main/spk1/00001"].text == "HELLO WORLD"
    assert by_id["main/spk2/00001"].text == "GOOD NIGHT"
    assert "1 clip(s) cannot be scored" in caplog.text
    # the same through a TalkLip filelist (transcripts beside the references)
    filelist = touch(ref / "test.txt", "spk1/00002 NF\nspk1/00001 NF\n")
    listed = {p.clip_id: p for p in load_suite("talklip-filelist", gen / "main", ref / "main", filelist).pairs}
    assert listed["spk1/00002"].text is None and str(bad) in listed["spk1/00002"].error
    assert listed["spk1/00001"].text == "HELLO WORLD"


def test_filelist_that_is_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "test.txt").write_bytes(b"spk1/00001 NF\nspk\xff/00002 NF\n")
    with pytest.raises(ValueError, match=r"test\.txt: line 2 is not valid UTF-8.*re-save"):
        read_filelist(tmp_path / "test.txt")
    (tmp_path / "t.tsv").write_bytes(b"/\nspk1/00006\t58\t1\n")
    (tmp_path / "t.wrd").write_bytes(b"\xe9t\xe9\n")
    with pytest.raises(ValueError, match=r"t\.wrd: line 1 is not valid UTF-8"):
        read_filelist(tmp_path / "t.tsv")


# --------------------------------------------------------------------------------------------------
# Paths and symlinks
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["../outside/00001 NF", "spk1/../../x NF", "/etc/passwd", "C:\\data\\x"])
def test_filelist_ids_must_stay_inside_the_root(lrs2, tmp_path, line):
    ref, gen = lrs2
    filelist = touch(tmp_path / "test.txt", f"spk1/00001 NF\n{line}\n")
    with pytest.raises(ValueError, match=r"test\.txt: line 2: clip id .* must be a path relative"):
        load_suite("talklip-filelist", gen / "main", ref / "main", filelist)


def test_tsv_ids_must_stay_inside_the_root(tmp_path):
    touch(tmp_path / "list.tsv", "/\nspk1/00006\t58\t1\n../x\t3\t4\n")
    with pytest.raises(ValueError, match=r"list\.tsv: line 3: clip id '../x'"):
        read_filelist(tmp_path / "list.tsv")


def test_symlinks_are_followed_and_outside_targets_warned_once(tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    for i in range(7):
        touch(elsewhere / "spk" / f"{i:05d}.mp4")
    touch(elsewhere / "single.mp4")
    ref = tmp_path / "ref"
    touch(ref / "inside/00001.mp4")
    (ref / "linked").symlink_to(elsewhere / "spk", target_is_directory=True)  # a symlinked folder
    (ref / "file.mp4").symlink_to(elsewhere / "single.mp4")  # a symlinked file
    (ref / "alias").symlink_to(ref / "inside", target_is_directory=True)  # inside the root: no warning
    (ref / "inside" / "loop").symlink_to(ref / "inside", target_is_directory=True)  # a loop: skipped
    gen = tmp_path / "gen"
    touch(gen / "inside/00001.mp4")
    with caplog.at_level(logging.WARNING, logger="talkbench.suites"):
        suite = load_suite("folder", gen, ref)
    ids = [p.clip_id for p in suite.pairs]
    assert ids == ["alias/00001", "file", "inside/00001"] + [f"linked/{i:05d}" for i in range(7)]
    outside = [r.getMessage() for r in caplog.records if "resolve outside" in r.getMessage()]
    assert len(outside) == 1
    assert outside[0].startswith("suite folder: 8 video file(s) are symlinks")
    assert "(first: file (reference), linked/00000 (reference), linked/00001 (reference)," in outside[0]
    assert "symlink loop" in caplog.text


# --------------------------------------------------------------------------------------------------
# Reports: one line per kind
# --------------------------------------------------------------------------------------------------

def test_unmatched_clips_are_reported_once_per_kind_with_count_and_first_five(tmp_path, caplog):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    for i in range(3):
        touch(ref / f"r{i}.mp4")
    for i in range(7):
        touch(gen / f"x{i}.mp4")
    touch(gen / "r0.mp4")
    touch(gen / "r0.avi")  # ambiguous extensions: also one line, whatever the count
    touch(gen / "x0.mkv")
    with caplog.at_level(logging.WARNING, logger="talkbench.suites"):
        load_suite("folder", gen, ref)
    lines = [r.getMessage() for r in caplog.records]
    assert [m for m in lines if "match no reference" in m] == [
        "suite folder: 7 generated clip(s) match no reference clip or transcript (first: x0, x1, x2, x3, x4, …)"]
    assert [m for m in lines if "have no generated clip" in m] == [
        "suite folder: 2 reference clip(s) have no generated clip (first: r1, r2)"]
    ambiguous = [m for m in lines if "several video files" in m]
    assert len(ambiguous) == 1 and "2 clip(s)" in ambiguous[0] and "(first: r0, x0)" in ambiguous[0]
    assert len(lines) == 3


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------

def test_suite_settings_are_stable_and_see_every_suite_wide_input(lrs2, tmp_path):
    ref, gen = lrs2
    main = ref / "main"
    filelist = touch(tmp_path / "test.txt", "spk1/00001 NF\nspk2/00001 MV\n")

    def fp(**kwargs):
        args = dict(kind="talklip-filelist", generated=gen / "main", reference=main, filelist=filelist)
        args.update(kwargs)
        return suite_settings(load_suite(args.pop("kind"), args.pop("generated"), args.pop("reference"),
                                            args.pop("filelist"), **args))

    base = fp()
    assert json.loads(json.dumps(base)) == base  # JSON-able
    assert fp() == base  # identical suite, identical fingerprint
    touch(gen / "main/spk1/00002.mp4")
    assert fp() == base  # generated clips are not part of it
    assert base["reference"] == str(main.resolve()) and base["kind"] == "talklip-filelist"
    assert base["filelist"]["path"] == str(filelist.resolve())

    changed = {}
    other_ref = tmp_path / "ref_copy"
    shutil.copytree(main, other_ref)
    changed["reference"] = fp(reference=other_ref)
    changed["kind"] = suite_settings(load_suite("lrs2", gen, ref))
    other_list = touch(tmp_path / "other.txt", "spk1/00001 NF\nspk2/00001 MV\n")
    changed["filelist path"] = fp(filelist=other_list)
    touch(filelist, "spk1/00001 NF\nspk2/00001 NF\n")  # same ids, other content
    changed["filelist content"] = fp()
    per_clip = fp()
    touch(main / "spk1/00001.txt", "Text:  HELLO THERE\n")
    np.save(main / "spk1/00001.npy", np.zeros((4, 4), np.int64))
    assert fp() == per_clip  # one clip's transcript or boxes: the runner's per-clip signature, not these
    bbx = tmp_path / "bbx"
    (bbx / "spk1").mkdir(parents=True)
    np.save(bbx / "spk1/00001.npy", np.zeros((4, 4), np.int64))
    changed["boxes dir"] = fp(boxes_dir=bbx)
    values = [base] + list(changed.values())
    assert len({json.dumps(v, sort_keys=True) for v in values}) == len(values), changed.keys()

    folder = tmp_path / "folder"
    touch(folder / "a.mp4")
    touch(folder / "transcripts.csv", "path,text\na.mp4,hello\n")
    before = suite_settings(load_suite("folder", folder, folder))
    assert before["transcripts"]["path"] == str((folder / "transcripts.csv").resolve())
    touch(folder / "transcripts.csv", "path,text\na.mp4,hello\n\n")  # same rows, other bytes
    assert suite_settings(load_suite("folder", folder, folder)) != before

import csv

import pytest

from talkbench.leaderboard import build_leaderboard, markdown
from talkbench.summary import SUMMARY_COLUMNS, write_csv


def _row(model, suite="lrs2", protocol="talklip2023", source="measured", **metrics):
    row = {c: "" for c in SUMMARY_COLUMNS}
    row.update(model=model, suite=suite, protocol=protocol, source=source, split="test", **metrics)
    return row


def test_groups_are_never_ranked_together_and_reported_rows_stay_marked(tmp_path):
    a = tmp_path / "a.csv"
    write_csv(a, [_row("gt", wer1=20.0), _row("paper", source="reported", wer1=10.0, citation="Wang 2023"),
                  _row("other", protocol="avhubert-official", wer1=5.0)], SUMMARY_COLUMNS)
    out = tmp_path / "lb" / "leaderboard.csv"
    rows = build_leaderboard([a], out)
    assert len(rows) == 3
    text = out.with_suffix(".md").read_text()
    assert text.count("### lrs2") == 2  # one table per protocol
    assert "reported (Wang 2023)" in text
    # best of the talklip2023 table is the reported 10.0, not the other protocol's 5.0
    first_table = text.split("### lrs2 — protocol avhubert-official")[0]
    assert "**10**" in first_table and "**5**" not in first_table
    assert (tmp_path / "lb" / "leaderboard_wer1.png").stat().st_size > 1000
    with out.open() as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == SUMMARY_COLUMNS


def test_newer_row_of_same_model_replaces_older(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_csv(a, [_row("m", psnr=30.0)], SUMMARY_COLUMNS)
    write_csv(b, [_row("m", psnr=31.0)], SUMMARY_COLUMNS)
    rows = build_leaderboard([a, b], tmp_path / "lb.csv")
    assert [float(r["psnr"]) for r in rows] == [31.0]


def test_bad_source_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        build_leaderboard([bad], tmp_path / "lb.csv")
    with pytest.raises(ValueError, match="not a run directory"):
        build_leaderboard([tmp_path / "nope"], tmp_path / "lb.csv")


def test_markdown_bolds_lowest_wer_and_highest_psnr():
    text = markdown([_row("a", wer1=30.0, psnr=25.0), _row("b", wer1=40.0, psnr=28.0)])
    assert "**28**" in text and "**30**" in text


def test_av_offset_best_is_closest_to_zero():
    text = markdown([_row("a", av_offset=-5.0), _row("b", av_offset=0.5), _row("c", av_offset=3.0)])
    assert "**0.5**" in text and "**-5**" not in text

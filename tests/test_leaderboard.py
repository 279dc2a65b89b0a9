import csv
import logging

import pytest

from talkbench.leaderboard import build_leaderboard, markdown, neutralise_csv_cell, restore_csv_cell
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
    legend = next(line for line in text.splitlines() if line.startswith("Higher or lower is better"))
    assert "psnr ↑, wer1 ↓." in legend and "fid" not in legend  # only the metrics of the tables
    assert "**28**" in text and "**30**" in text


def test_av_offset_best_is_closest_to_zero():
    text = markdown([_row("a", av_offset=-5.0), _row("b", av_offset=0.5), _row("c", av_offset=3.0)])
    assert "**0.5**" in text and "**-5**" not in text


def test_csv_neutralises_formula_text_but_keeps_negative_numbers(tmp_path):
    source = tmp_path / "a.csv"
    write_csv(source, [_row("=HYPERLINK(\"http://x\")", av_offset=-1.083, wer1=20.0, citation="@cite"),
                       _row("+cmd", av_offset=-5.0), _row("-neg"), _row("\tTab"), _row("'=already"),
                       _row("'quoted'")], SUMMARY_COLUMNS)
    out = tmp_path / "lb.csv"
    build_leaderboard([source], out)
    with out.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [r["model"] for r in written] == ["'=HYPERLINK(\"http://x\")", "'+cmd", "'-neg", "'\tTab", "'=already",
                                             "'quoted'"]  # a source's "'=already" is read as neutralised "=already"
    assert written[0]["citation"] == "'@cite"
    assert written[0]["av_offset"] == "-1.083" and written[1]["av_offset"] == "-5.0"  # numbers stay numbers
    assert written[0]["wer1"] == "20.0"
    # the leaderboard CSV read back as a source gives the original names (no double quoting, no duplicates)
    again = build_leaderboard([out, source], tmp_path / "lb2.csv")
    assert sorted(r["model"] for r in again) == sorted(["=HYPERLINK(\"http://x\")", "+cmd", "-neg", "\tTab",
                                                        "=already", "'quoted'"])
    for text in ["=x", "'=x", "''@x", "'quoted'", "plain", "-", "\rx", ""]:
        assert restore_csv_cell(neutralise_csv_cell(text)) == text
    assert neutralise_csv_cell(-1.083) == -1.083 and neutralise_csv_cell("-1e-3") == "-1e-3"
    assert neutralise_csv_cell("-inf") == "'-inf"  # not a plain decimal: a spreadsheet would parse a formula


def test_markdown_escapes_pipes_and_newlines():
    text = markdown([_row("a|b\nc", source="reported", citation="X | Y", wer1=1.0)])
    row = next(line for line in text.splitlines() if line.startswith("| a"))
    assert row.startswith("| a\\|b c | reported (X \\| Y) |")
    assert row.count("|") - row.count("\\|") == 5  # model, source, n_clips, wer1: 4 cells, 5 delimiters


def test_non_numeric_metric_is_warned_about(tmp_path, caplog):
    source = tmp_path / "a.csv"
    write_csv(source, [_row("good", wer1=20.0), _row("bad", wer1="n/a", psnr=30.0)], SUMMARY_COLUMNS)
    with caplog.at_level(logging.WARNING, logger="talkbench.leaderboard"):
        build_leaderboard([source], tmp_path / "lb.csv")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(source) in warnings[0] and "'bad'" in warnings[0] and "wer1" in warnings[0] and "'n/a'" in warnings[0]
    assert "line 3" in warnings[0]


def test_chart_labels_are_drawn_literally(tmp_path):
    source = tmp_path / "a.csv"
    write_csv(source, [_row("$\\notacommand{$", wer1=1.0), _row("cost $5", protocol="$p")], SUMMARY_COLUMNS)
    build_leaderboard([source], tmp_path / "lb.csv")  # Matplotlib's mathtext parser used to raise here
    assert (tmp_path / "lb_wer1.png").stat().st_size > 1000


def test_sources_with_a_bom_are_read_and_other_encodings_named(tmp_path):
    source = tmp_path / "excel.csv"
    write_csv(source, [_row("caf\u00e9", wer1=1.0)], SUMMARY_COLUMNS)
    source.write_bytes("\ufeff".encode() + source.read_bytes())  # Excel's "CSV UTF-8"
    assert [r["model"] for r in build_leaderboard([source], tmp_path / "lb.csv")] == ["caf\u00e9"]
    source.write_bytes(source.read_bytes()[3:].decode().encode("latin-1"))
    with pytest.raises(ValueError, match=r"excel\.csv: line 2 is not valid UTF-8.*re-save"):
        build_leaderboard([source], tmp_path / "lb.csv")

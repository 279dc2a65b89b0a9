"""The observer spine: specs declare each metric once, protocols choose observers and options, and the summary,
leaderboard and CLI derive from them."""

from __future__ import annotations

import ast
import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from talkbench import protocols
from talkbench.cli import app
from talkbench.evaluate import EvaluateConfig, EvaluationError, evaluate
from talkbench.measure import _split_row
from talkbench.leaderboard import markdown
from talkbench.observers import (METRIC_COLUMNS, METRICS, SPECS, MetricSpec, ObserverSpec, OptionSpec,
                                 RegistryError, _register, check_compatible)
from talkbench.observers.base import ClipSkipped
from talkbench.observers.specs import ALL_SPECS
from talkbench.summary import SUMMARY_COLUMNS

from test_evaluate import DEMO, make_suite

PACKAGE = Path(__file__).resolve().parent.parent / "talkbench"


def test_summary_columns_and_directions_come_from_the_specs():
    first = SUMMARY_COLUMNS.index(METRIC_COLUMNS[0])
    block = SUMMARY_COLUMNS[first:first + 3 * len(METRIC_COLUMNS)]
    assert block == tuple(c for m in METRIC_COLUMNS for c in (m, f"{m}_lo", f"{m}_hi"))
    assert {"cer2", "cer2_corpus", "fd_colour"} <= set(METRIC_COLUMNS)  # once dropped silently by the summary
    for spec in ALL_SPECS:
        for metric in spec.metrics:
            assert METRICS[metric.column] is metric or METRICS[metric.column] == metric
    assert METRICS["av_offset"].direction == "zero" and not METRICS["lse_d"].higher_is_better


def test_a_contradicting_spec_is_an_error_at_registration():
    lse = METRICS["lse_c"]
    twin = ObserverSpec("twin", "x", (), (MetricSpec("lse_c", "lower", "", "clip-mean", "?", "lse_c"),),
                        ("lse_c",))
    with pytest.raises(RegistryError, match="lse_c"):
        _register(list(ALL_SPECS) + [twin])
    option_twin = ObserverSpec("opt", "x", (), (lse,), ("lse_c",),
                               options=(OptionSpec("lse_mode", "int", 0, "?"),))
    with pytest.raises(RegistryError, match="lse_mode"):
        _register(list(ALL_SPECS) + [option_twin])
    with pytest.raises(RegistryError, match="declared twice"):
        _register(list(ALL_SPECS) + [SPECS["mvm"]])
    with pytest.raises(RegistryError, match="both write `lse_c`"):
        check_compatible([SPECS["syncnet"], SPECS["mini-syncnet"]])
    for protocol in protocols.PROTOCOLS.values():  # every protocol's observers can run together
        check_compatible(protocol.observer_specs(protocol.metrics))


def test_an_observer_writing_an_undeclared_column_or_nan_loses_only_its_row():
    spec = SPECS["image_quality"]
    values, features = _split_row(spec, {"psnr": 30.0, "n_frames": 3})
    assert values == {"psnr": 30.0, "n_frames": 3} and features == {}
    with pytest.raises(RuntimeError, match="undeclared column.*wer1"):
        _split_row(spec, {"psnr": 30.0, "wer1": 5.0})
    colour = SPECS["colour_stats"]
    with pytest.raises(ClipSkipped, match="non-finite colour_generated"):
        _split_row(colour, {"n_frames_colour": 2, "colour_generated": np.array([1.0, np.nan])})


def test_options_are_typed_by_their_spec_and_defaults_come_from_the_protocol():
    opts = protocols.TALKLIP2023.options(["lse_c", "wer1"], {"lse_min_track": "20", "avhubert_beam": "4"})
    assert opts["lse_min_track"] == 20 and opts["avhubert_beam"] == 4 and opts["lse_jpeg_compat"] is True
    assert opts["max_frames"] is None and "mvm_long_clips" not in opts
    with pytest.raises(ValueError, match="Unknown option.*mvm_long_clips.*lse_mode"):
        protocols.TALKLIP2023.options(["lse_c"], {"mvm_long_clips": "center"})
    with pytest.raises(ValueError, match="lse_mode.*wav2lip, pipeline"):
        protocols.TALKLIP2023.options(["lse_c"], {"lse_mode": "fast"})
    with pytest.raises(ValueError, match="avhubert_beam.*>= 1"):
        protocols.TALKLIP2023.options(["wer1"], {"avhubert_beam": "0"})


def test_the_options_label_names_only_what_changes_numbers_and_differs_from_the_protocol():
    label = protocols.options_label
    tl = protocols.TALKLIP2023
    assert label(tl, tl.options(["lse_c"], {})) == ""
    assert label(tl, tl.options(["lse_c"], {"lse_chunk": "16"})) == ""  # speed only
    assert label(tl, tl.options(["lse_c"], {"lse_mode": "pipeline", "lse_jpeg_compat": "no"})) == \
        "lse_jpeg_compat=false;lse_mode=pipeline"
    assert label(protocols.MINI, protocols.MINI.options(["wer1"], {"mini_lexicon": "false"})) == "mini_lexicon=false"


def test_the_leaderboard_never_ranks_rows_of_other_options_together():
    base = {c: "" for c in SUMMARY_COLUMNS} | {"suite": "lrs2", "protocol": "mini", "source": "measured",
                                              "n_clips": "4"}
    rows = [base | {"model": "a", "lse_c": "3.0"},
            base | {"model": "b", "lse_c": "5.0", "options": "lse_mode=pipeline"},
            base | {"model": "c", "lse_c": "2.0"}]
    text = markdown(rows)
    assert text.count("### lrs2 — protocol mini") == 2
    assert "options: the protocol defaults" in text and "options: lse_mode=pipeline" in text
    defaults = text[text.index("the protocol defaults"):text.index("lse_mode=pipeline")]
    assert "| a | measured | 4 | **3** |" in defaults  # a is best among the default-option rows, not b


def test_a_run_records_its_options_and_the_cli_takes_them(tmp_path):
    reference, generated = make_suite(tmp_path / "suite", n_speakers=1)
    result = CliRunner().invoke(app, ["evaluate", str(generated), "--reference", str(reference), "--protocol", "mini",
                                      "--metrics", "wer1", "--option", "mini_lexicon=false", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout[result.stdout.index("model,"):])))  # piped: CSV
    assert rows[0]["options"] == "mini_lexicon=false" and rows[0]["protocol"] == "mini"
    bad = CliRunner().invoke(app, ["evaluate", str(generated), "--protocol", "mini", "--metrics", "wer1",
                                   "--option", "lse_mode=pipeline", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "mini_lexicon" in bad.output and "Traceback" not in bad.output
    with pytest.raises(EvaluationError, match="mini_lexicon"):
        evaluate(EvaluateConfig(generated=generated, out=tmp_path / "x", metrics=("wer1",), protocol="mini",
                                options={"mini_lexicon": "perhaps"}))


def test_no_module_branches_on_a_protocol_name():
    """Only talkbench/protocols.py compares with a protocol's name; everything else asks the Protocol object."""
    names = set(protocols.PROTOCOLS)
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "protocols.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(c in names for c in constants):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_every_card_measures_what_its_observer_spec_declares():
    from talkbench import cards

    for spec in ALL_SPECS:
        for name in spec.cards:
            card = cards.load_card(name)
            if card.role != "observer":
                continue
            assert set(card.metrics) <= set(spec.metric_columns), (name, card.metrics)
            for metric in card.metrics:
                assert card.higher_is_better[metric] == METRICS[metric].higher_is_better, (name, metric)


def test_a_one_clip_folder_is_a_suite_scored_with_the_protocol_defaults(tmp_path):
    """evaluate with no --metrics scores the protocol's default metrics."""
    folder = tmp_path / "gen" / "main" / "s"
    folder.mkdir(parents=True)
    shutil.copyfile(DEMO / "meeting.mp4", folder / "a.mp4")
    result = evaluate(EvaluateConfig(generated=tmp_path / "gen", reference=tmp_path / "gen", out=tmp_path / "run",
                                     metrics=(), suite="folder"))
    assert result.summary["psnr"] == 100.0 and result.summary["wer1"] == ""
    assert result.summary["psnr_lo"] == "" and result.summary["psnr_hi"] == ""  # one clip: no interval, not NaN

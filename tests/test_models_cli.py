"""``talkbench models list | path | download | verify`` through Typer's CliRunner (downloads from 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from talkbench import weights
from talkbench.cards import load_card
from talkbench.cli.models import app, install_download_progress, rich_download_progress
from test_cards import REQUIRED_CARDS, use_card_folder, write_card
from test_weights import PAYLOAD, PAYLOAD_SHA, FileServer

runner = CliRunner()


def error_paragraph(result) -> str:
    """The one ``error: ...`` paragraph on stderr (from ``error:`` to the end): no traceback, no blank line."""
    err = result.stderr
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    paragraph = err[err.index("error: "):].strip()
    assert "\n\n" not in paragraph, paragraph
    return paragraph


@pytest.fixture
def env(tmp_path, monkeypatch):
    home, cards = use_card_folder(tmp_path, monkeypatch)
    monkeypatch.delenv("TALKBENCH_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setattr(weights, "_progress_factory", None)
    srv = FileServer()
    srv.files["/files/model.bin"] = PAYLOAD
    yield home, cards, srv
    srv.close()


def test_list_shows_every_card(env):
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    names = {r["name"] for r in rows}
    assert REQUIRED_CARDS <= names
    by_name = {r["name"]: r for r in rows}
    assert by_name["syncnet-v2"]["metrics"] == ["lse_c", "lse_d", "av_offset"]
    assert by_name["talklip-l"]["released"] is False
    assert not any(r["cached"] for r in rows if not r["bundled"])
    table = runner.invoke(app, ["list"])
    assert table.exit_code == 0
    for name in REQUIRED_CARDS:
        assert name in table.stdout


def test_path_prints_override_or_explains(env, tmp_path):
    local = tmp_path / "syncnet_v2.model"
    local.write_bytes(b"weights")
    ok = runner.invoke(app, ["path", "syncnet-v2", "--weights", f"syncnet-v2={local}"])
    assert ok.exit_code == 0 and ok.stdout.strip() == str(local)
    missing = runner.invoke(app, ["path", "syncnet-v2"])
    assert missing.exit_code == 1
    assert "talkbench models download syncnet-v2" in missing.stderr and missing.stdout == ""
    unknown = runner.invoke(app, ["path", "syncnet"])
    assert unknown.exit_code == 2 and "syncnet-v2" in unknown.stderr


def test_download_then_path_and_list(env):
    home, cards, srv = env
    write_card(cards, "tiny", [srv.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    result = runner.invoke(app, ["download", "tiny"])  # with the progress bar (on stderr)
    assert result.exit_code == 0, result.output
    dest = weights.cache_path("tiny")
    assert dest.read_bytes() == PAYLOAD
    assert result.stdout.strip() == f"tiny\t{dest}"
    assert runner.invoke(app, ["path", "tiny"]).stdout.strip() == str(dest)
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["list", "--json"]).stdout)}
    assert rows["tiny"]["cached"] is True and rows["tiny"]["sha256_source"] == "card"


def test_download_bar_starts_at_the_first_bytes_and_nests_under_another_bar(env):
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    _, close = rich_download_progress(console)
    close()  # a download that never got bytes (cached, or failed at once) draws nothing
    assert console.file.getvalue() == ""
    update, close = rich_download_progress(console)
    with Progress(console=console) as outer:  # e.g. evaluate's clip bar, live while observers are built
        outer.add_task("evaluate", total=3)
        update(5 << 20, 10 << 20, "tiny")
        update(10 << 20, 10 << 20, "tiny")
        close()
    assert "tiny" in console.file.getvalue() and "10.5 MB" in console.file.getvalue()


def test_installed_bar_shows_the_automatic_download_of_resolve_and_is_removed_after(env):
    _, cards, srv = env
    write_card(cards, "tiny", [srv.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    restore = install_download_progress(console)
    try:
        assert weights.resolve("tiny").read_bytes() == PAYLOAD
    finally:
        restore()
    assert "tiny" in console.file.getvalue()
    assert weights.set_download_progress(None) is None  # restore() put the previous (no) display back


def test_download_needs_names_and_reports_failures(env):
    _, cards, srv = env
    assert runner.invoke(app, ["download"]).exit_code == 2
    never = runner.invoke(app, ["download", "talklip-lc", "--no-progress"])
    assert never.exit_code == 1 and "never released" in never.stderr
    write_card(cards, "broken", [srv.base + "/nothing-here"], sha256=PAYLOAD_SHA)
    failed = runner.invoke(app, ["download", "broken", "--no-progress"])
    assert failed.exit_code == 1 and "404" in failed.stderr


def test_verify_pin_flow(env):
    home, cards, srv = env
    write_card(cards, "tiny", [srv.base + "/files/model.bin"])  # sha256 unknown
    assert runner.invoke(app, ["download", "tiny", "--no-progress"]).exit_code == 0
    first = runner.invoke(app, ["verify", "tiny", "--json"])
    assert first.exit_code == 0
    assert json.loads(first.stdout)[0]["status"] == "unverified"
    pinned = runner.invoke(app, ["verify", "--pin", "tiny", "--json"])
    assert pinned.exit_code == 0 and json.loads(pinned.stdout)[0]["status"] == "pinned"
    assert json.loads((home / "pins.json").read_text())["tiny"]["sha256"] == PAYLOAD_SHA
    again = runner.invoke(app, ["verify", "--json"])  # default: every cached file
    assert again.exit_code == 0
    assert [(r["name"], r["status"]) for r in json.loads(again.stdout)] == [("tiny", "ok")]
    weights.cache_path("tiny").write_bytes(b"tampered")
    bad = runner.invoke(app, ["verify"])
    assert bad.exit_code == 1 and "mismatch" in bad.stdout


def test_verify_a_given_file(env, tmp_path):
    _, cards, srv = env
    write_card(cards, "tiny", [srv.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    good = tmp_path / "good.bin"
    good.write_bytes(PAYLOAD)
    assert runner.invoke(app, ["verify", "tiny", "--file", str(good)]).exit_code == 0
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    assert runner.invoke(app, ["verify", "tiny", "--file", str(other)]).exit_code == 1
    assert runner.invoke(app, ["verify", "--file", str(good)]).exit_code == 2  # needs exactly one card
    assert srv.requests == []


def test_models_is_wired_into_the_talkbench_command(env):
    from talkbench.cli import app as root

    names = {getattr(g, "name", None) for g in root.registered_groups}
    if "models" not in names:
        pytest.skip("talkbench.cli has not added the models sub-app yet (lead: models.register(app))")
    result = runner.invoke(root, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert REQUIRED_CARDS <= {r["name"] for r in json.loads(result.stdout)}


def test_list_shows_bundled_weights_as_available(env):
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["list", "--json"]).stdout)}
    mini = [r for r in rows.values() if r["bundled"]]
    assert {"mini-syncnet", "mini-lipreader-b", "talklip-mini"} <= {r["name"] for r in mini}
    for r in mini:
        card = load_card(r["name"])
        assert r["cached"] is True and r["path"] == str(card.bundled_path())
    assert rows["syncnet-v2"]["bundled"] is False and rows["syncnet-v2"]["cached"] is False
    table = runner.invoke(app, ["list"]).stdout
    line = next(line for line in table.splitlines() if "mini-syncnet" in line)
    assert "bundled" in line


def test_list_survives_a_broken_card(env):
    _, cards, _ = env
    bad = write_card(cards, "broken-params", ["http://x/y"])
    bad.write_text(bad.read_text().replace('layout = "raw bytes"', 'layout = "raw bytes"\nparams = "abc"'))
    worse = write_card(cards, "broken-measures", ["http://x/y"])
    worse.write_text(worse.read_text().split("[measures]")[0].replace('layout = "raw bytes"',
                                                                       'layout = "raw bytes"\nmeasures = "oops"'))
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert REQUIRED_CARDS <= set(rows)
    assert str(bad) in rows["broken-params"]["error"] and "params" in rows["broken-params"]["error"]
    assert str(worse) in rows["broken-measures"]["error"] and "measures" in rows["broken-measures"]["error"]
    assert rows["syncnet-v2"]["error"] is None
    assert "broken-params" in result.stderr and "Traceback" not in result.output
    table = runner.invoke(app, ["list"])
    assert table.exit_code == 0 and "syncnet-v2" in table.stdout
    assert "error" in next(line for line in table.stdout.splitlines() if "broken-params" in line)
    # naming the broken card elsewhere is a clean usage error
    for args in (["verify", "broken-params"], ["download", "broken-params"], ["path", "broken-params"]):
        named = runner.invoke(app, args)
        assert named.exit_code == 2, args
        assert error_paragraph(named) and str(bad) in named.stderr and named.exception is not None
        assert isinstance(named.exception, SystemExit)  # no traceback: typer.Exit, not the CardError


def test_weights_errors_are_one_error_paragraph_with_documented_exit_codes(env, tmp_path):
    _, cards, srv = env
    write_card(cards, "wrongsha", [srv.base + "/files/model.bin"], sha256="0" * 64)
    checksum = runner.invoke(app, ["download", "wrongsha", "--no-progress"])
    assert checksum.exit_code == 1 and "wrong sha256" in error_paragraph(checksum)
    srv.files["/files/junk.bin"] = b"this is not a checkpoint" * 100
    write_card(cards, "junk", [srv.base + "/files/junk.bin"])
    junk = runner.invoke(app, ["download", "junk", "--no-progress"])
    assert junk.exit_code == 1 and "not a torch checkpoint" in error_paragraph(junk)
    escape_card = write_card(cards, "escape", [srv.base + "/files/model.bin"], file_name="../../outside.bin")
    escaped = runner.invoke(app, ["download", "escape", "--no-progress"])
    assert escaped.exit_code == 2 and str(escape_card) in error_paragraph(escaped)
    assert not (tmp_path / "outside.bin").exists() and srv.requests[-1][0] == "/files/junk.bin"
    everything = runner.invoke(app, ["download", "--all", "--no-progress"])  # broken card: reported, others tried
    assert everything.exit_code == 2 and str(escape_card) in everything.stderr
    assert isinstance(everything.exception, SystemExit)


def test_offline_download_says_where_to_put_the_file_not_to_run_the_download_again(env):
    _, cards, srv = env
    url = srv.base + "/nothing-here"
    write_card(cards, "tiny", [url])
    result = runner.invoke(app, ["download", "tiny", "--no-progress"])
    assert result.exit_code == 1
    err = error_paragraph(result)
    assert "models download" not in result.stderr
    assert url in err and str(weights.cache_path("tiny")) in err and "--weights tiny=PATH" in err
    assert not err.startswith("error: tiny:")  # the card name is not stacked in front of the message
    assert "WARNING" not in result.stderr  # each URL's failure is in the error, not repeated as a warning


def test_verify_rehashes_instead_of_trusting_size_and_mtime(env):
    _, cards, srv = env
    write_card(cards, "tiny", [srv.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    assert runner.invoke(app, ["download", "tiny", "--no-progress"]).exit_code == 0
    assert runner.invoke(app, ["verify", "tiny"]).exit_code == 0
    dest = weights.cache_path("tiny")
    st = dest.stat()
    dest.write_bytes(PAYLOAD[:500] + bytes([PAYLOAD[500] ^ 0xFF]) + PAYLOAD[501:])  # same size
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    result = runner.invoke(app, ["verify", "tiny", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)[0]["status"] == "mismatch"


def test_verify_a_named_bundled_card_checks_the_shipped_file(env):
    result = runner.invoke(app, ["verify", "mini-syncnet", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["status"] == "ok" and row["path"] == str(load_card("mini-syncnet").bundled_path())


def test_path_rejects_bad_weights_items_as_usage_errors(env, tmp_path):
    directory = runner.invoke(app, ["path", "syncnet-v2", "--weights", f"syncnet-v2={tmp_path}"])
    assert directory.exit_code == 2 and error_paragraph(directory).startswith("error: --weights syncnet-v2=")
    assert "is a directory" in directory.stderr
    local = tmp_path / "s.model"
    local.write_bytes(b"x")
    typo = runner.invoke(app, ["path", "syncnet-v2", "--weights", f"mini-syncnt={local}"])
    assert typo.exit_code == 2 and "Did you mean `mini-syncnet`" in typo.stderr

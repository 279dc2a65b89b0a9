"""``talkbench models list | path | download | verify`` through Typer's CliRunner (downloads from 127.0.0.1)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from talkbench import weights
from talkbench.cli.models import app
from test_weights import PAYLOAD, PAYLOAD_SHA, REQUIRED_CARDS, FileServer, write_card

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    home, cards = tmp_path / "home", tmp_path / "cards"
    cards.mkdir()
    monkeypatch.setenv("TALKBENCH_HOME", str(home))
    monkeypatch.setenv("TALKBENCH_CARDS", str(cards))
    monkeypatch.delenv("TALKBENCH_WEIGHTS_MIRROR", raising=False)
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
    assert not any(r["cached"] for r in rows)
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

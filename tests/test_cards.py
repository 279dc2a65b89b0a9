"""talkbench.cards: the shipped cards, card parsing and validation, card folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from talkbench import cards, weights

REQUIRED_CARDS = {
    "avhubert-large-lrs2", "avhubert-base-lrs2", "talklip-l", "talklip-lc", "talklip-g", "talklip-gc",
    "talklip-disc", "conformer-lrs2", "mvm-lrw", "syncnet-v2", "s3fd",
}


def write_card(folder: Path, name: str, urls: list[str], sha256: str = "unknown", released: bool = True,
               sha256_prefix: str | None = None, file_name: str = "model.bin") -> Path:
    """A minimal valid card file (what the tests need; the shipped cards carry much more)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f'name = "{name}"', f'title = "test checkpoint {name}"', 'role = "observer"',
        f'file_name = "{file_name}"', f"urls = {json.dumps(urls)}", f'sha256 = "{sha256}"',
        f"released = {'true' if released else 'false'}", 'license = "test"', 'layout = "raw bytes"',
    ]
    if sha256_prefix:
        lines.append(f'sha256_prefix = "{sha256_prefix}"')
    lines += ["", "[source]", 'repo = "talkbench/tests"', "", "[input]", 'note = "none"', "",
              "[measures]", 'description = "nothing"', 'metrics = ["lse_c"]', "", "[measures.higher_is_better]",
              "lse_c = true"]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def use_card_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A fresh cache home and an empty card folder searched before the shipped cards: (home, card folder)."""
    home = tmp_path / "home"
    folder = tmp_path / "cards"
    folder.mkdir()
    monkeypatch.setenv("TALKBENCH_HOME", str(home))
    monkeypatch.setenv("TALKBENCH_CARDS", str(folder))
    return home, folder


@pytest.fixture
def card_env(tmp_path, monkeypatch):
    return use_card_folder(tmp_path, monkeypatch)


def test_every_card_the_protocol_needs_is_shipped_and_valid():
    by_name = {c.name: c for c in cards.list_cards()}
    assert REQUIRED_CARDS <= set(by_name), f"missing cards: {REQUIRED_CARDS - set(by_name)}"
    for card in by_name.values():
        assert card.card_path is not None and card.card_path.stem == card.name
        assert card.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", card.sha256)
        assert card.license and card.layout and card.input
        assert re.fullmatch(r"[0-9a-f]{40}", card.source["commit"]), card.name
        assert "/" in card.source["repo"], card.name
        assert card.released == bool(card.urls), card.name
        for url in card.urls:
            assert url.startswith(("http://", "https://")), (card.name, url)
        assert card.reported.get("status"), card.name


def test_observer_cards_cover_the_registry_metrics():
    from talkbench.observers import SPECS, metric_spec
    from talkbench.protocols import TALKLIP2023

    by_metric: dict[str, list[str]] = {}
    for card in cards.list_cards():
        assert set(card.higher_is_better) == set(card.metrics)
        if card.role == "observer":
            assert card.metrics, f"observer card {card.name} names no metric"
            assert card.measures
        if card.protocol != "talklip2023":
            continue  # other protocols' observers (e.g. `mini`) are checked in test_mini_cards_*
        for metric in card.metrics:
            assert metric in TALKLIP2023.observers, f"{card.name}: unknown metric {metric}"
            assert card.name in SPECS[TALKLIP2023.observers[metric]].cards, (card.name, metric)
            assert card.higher_is_better[metric] == metric_spec(metric).higher_is_better, (card.name, metric)
            by_metric.setdefault(metric, []).append(card.name)
    model_metrics = {m for m, observer in TALKLIP2023.observers.items() if SPECS[observer].cards}
    assert set(by_metric) == model_metrics  # every network metric has a card
    for metric, names in by_metric.items():  # several only when an option of the observer chooses between them
        spec = SPECS[TALKLIP2023.observers[metric]]
        assert len(names) == 1 or any(o.choices and len(o.choices) >= len(names) for o in spec.options), names
    assert cards.load_card("syncnet-v2").higher_is_better == {"lse_c": True, "lse_d": False, "av_offset": False}
    assert cards.load_card("conformer-lrs2").higher_is_better == {"wer2": False, "wer2_corpus": False,
                                                                  "cer2": False, "cer2_corpus": False, "ver2": False}


def test_shipped_cards_come_from_the_repository_in_a_source_checkout(monkeypatch):
    monkeypatch.delenv("TALKBENCH_CARDS", raising=False)
    dirs = cards.card_dirs()
    assert dirs[-1].name in ("cards", "_cards") and dirs[-1].is_dir()
    assert {p.stem for p in dirs[-1].glob("*.toml")} >= REQUIRED_CARDS


def test_unknown_card_suggests_the_closest_name():
    with pytest.raises(cards.CardError, match="Did you mean `syncnet-v2`"):
        cards.load_card("syncnet")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('name = "bad"', 'name = "other"'), "must equal the file name"),
    (lambda t: t.replace('sha256 = "unknown"', 'sha256 = "abc123"'), "64 hex digits"),
    (lambda t: t.replace('role = "observer"', 'role = "oracle"'), "`role` must be one of"),
    (lambda t: t.replace('license = "test"\n', ""), "lacks field"),
    (lambda t: t.replace("lse_c = true", "lse_d = true"), "higher_is_better"),
    (lambda t: t.replace('urls = ["http://x/y"]', "urls = []"), "needs at least one URL"),
    (lambda t: t + "this is = = not toml\n", "cannot read card"),
])
def test_malformed_cards_are_rejected_with_the_file_named(card_env, edit, message):
    _, folder = card_env
    path = write_card(folder, "bad", ["http://x/y"])
    path.write_text(edit(path.read_text()))
    with pytest.raises(cards.CardError, match=message) as info:
        cards.parse_card(path)
    assert str(path) in str(info.value)


def test_local_card_folder_overrides_a_shipped_card(card_env):
    _, folder = card_env
    write_card(folder, "syncnet-v2", ["http://127.0.0.1:9/x"], file_name="local.model")
    assert cards.load_card("syncnet-v2").file_name == "local.model"
    assert len([c for c in cards.list_cards() if c.name == "syncnet-v2"]) == 1


@pytest.mark.parametrize("value", ["/abs/file.pt", "../outside.pt", 3])
def test_bundled_path_must_stay_inside_the_package(card_env, value):
    _, folder = card_env
    path = write_card(folder, "escape", [], released=False)
    path.write_text(path.read_text().replace('released = false', f'released = false\nbundled = {json.dumps(value)}'))
    with pytest.raises(cards.CardError, match="bundled"):
        cards.load_card("escape")


def test_mini_cards_cover_the_mini_protocol_and_their_files_are_shipped():
    from talkbench.observers import SPECS
    from talkbench.protocols import MINI

    mini = [c for c in cards.list_cards() if c.protocol == "mini"]
    metrics: dict[str, list[str]] = {}
    for card in mini:
        assert card.bundled and not card.released
        path = card.bundled_path()
        assert path is not None and path.is_file(), card.name
        assert card.sha256 is not None and weights.file_sha256(path) == card.sha256, card.name
        assert card.size_bytes == path.stat().st_size
        for metric in card.metrics:
            metrics.setdefault(metric, []).append(card.name)
    assert set(metrics) == {m for m, observer in MINI.observers.items() if SPECS[observer].cards}
    assert all(len(v) == 1 for v in metrics.values())
    total = sum(c.bundled_path().stat().st_size for c in mini)
    assert total < 30_000_000


@pytest.mark.parametrize("file_name", ["../../x", "/etc/x.pt", "sub/model.pt", "sub\\\\model.pt", "", "..",
                                       "model..pt"])
def test_card_file_name_must_be_a_plain_name(card_env, file_name):
    _, folder = card_env
    path = write_card(folder, "escape", ["http://127.0.0.1:9/x"], file_name=file_name)
    with pytest.raises(cards.CardError, match="file_name") as info:
        cards.parse_card(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:,hello", "http:///nohost"])
def test_card_urls_must_be_http_or_https(card_env, url):
    _, folder = card_env
    path = write_card(folder, "local", [url])
    with pytest.raises(cards.CardError, match="http") as info:
        cards.parse_card(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('layout = "raw bytes"', 'layout = "raw bytes"\nparams = "abc"'), "params"),
    (lambda t: t.replace('[measures]\ndescription = "nothing"\nmetrics = ["lse_c"]\n\n'
                         '[measures.higher_is_better]\nlse_c = true\n', 'measures = "oops"\n'), "measures"),
    (lambda t: t.replace('layout = "raw bytes"', 'layout = "raw bytes"\nparams = 1.5'), "params"),
    (lambda t: t.replace('metrics = ["lse_c"]', 'metrics = "lse_c"'), "metrics"),
    (lambda t: t.replace('released = true', 'released = "yes"'), "released"),
    (lambda t: t.replace('title = "test checkpoint bad"', 'title = 3'), "title"),
])
def test_wrongly_typed_fields_are_card_errors_naming_the_file(card_env, edit, message):
    _, folder = card_env
    path = write_card(folder, "bad", ["http://x/y"])
    text = edit(path.read_text())
    assert text != path.read_text()
    if message == "measures":  # the table must go: `measures` becomes a plain string
        text = text.replace('measures = "oops"\n', "").replace('layout = "raw bytes"',
                                                               'layout = "raw bytes"\nmeasures = "oops"')
    path.write_text(text)
    with pytest.raises(cards.CardError, match=message) as info:
        cards.parse_card(path)
    assert str(path) in str(info.value) and info.value.card_path == path


def test_scan_cards_lists_the_good_cards_next_to_a_broken_one(card_env):
    _, folder = card_env
    path = write_card(folder, "broken", ["http://x/y"])
    path.write_text(path.read_text().replace('layout = "raw bytes"', 'layout = "raw bytes"\nparams = "abc"'))
    good, broken = cards.scan_cards()
    assert set(broken) == {"broken"} and str(path) in str(broken["broken"])
    assert REQUIRED_CARDS <= {c.name for c in good}
    with pytest.raises(cards.CardError):
        cards.list_cards()

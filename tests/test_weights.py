"""talkbench.weights: the shipped cards, the cache, resolve(), downloads with resume against a 127.0.0.1 server."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from talkbench import weights

REQUIRED_CARDS = {
    "avhubert-large-lrs2", "avhubert-base-lrs2", "talklip-l", "talklip-lc", "talklip-g", "talklip-gc",
    "talklip-disc", "conformer-lrs2", "mvm-lrw", "syncnet-v2", "s3fd",
}
PAYLOAD = np.random.RandomState(0).bytes(3_000_000 + 12_345)  # ~3 MB: several 1 MiB chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------------------------------------
# A small HTTP server on 127.0.0.1 with Range support and failure modes
# ---------------------------------------------------------------------------------------------

class FileServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1; records every request's path and Range header.

    Failure modes: ``ignore_range`` (always 200 + whole body), ``cut_after`` (the next response sends only
    that many body bytes, then drops the connection), ``html`` (paths answered by a web page).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.html: set[str] = set()
        self.ignore_range = False
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path in server.html:
                    body = b"<html><body>Google Drive can't scan this file for viruses.</body></html>"
                    self._send(200, body, {"Content-Type": "text/html; charset=utf-8"})
                    return
                data = server.files.get(self.path)
                if data is None:
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", rng or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                    headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    status = 206
                else:
                    headers, status = {}, 200
                headers["Content-Type"] = "application/octet-stream"
                body = data[start:]
                cut, server.cut_after = server.cut_after, None
                self._send(status, body, headers, cut=cut)

            def _send(self, status, body, headers, cut=None):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if cut is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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


@pytest.fixture
def server():
    srv = FileServer()
    srv.files["/files/model.bin"] = PAYLOAD
    yield srv
    srv.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh cache home and a card folder searched before the shipped cards."""
    home = tmp_path / "home"
    cards = tmp_path / "cards"
    cards.mkdir()
    monkeypatch.setenv("TALKBENCH_HOME", str(home))
    monkeypatch.setenv("TALKBENCH_CARDS", str(cards))
    monkeypatch.delenv("TALKBENCH_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setattr(weights, "_warned_unknown", set())
    return home, cards


# ---------------------------------------------------------------------------------------------
# Shipped cards
# ---------------------------------------------------------------------------------------------

def test_every_card_the_protocol_needs_is_shipped_and_valid():
    cards = {c.name: c for c in weights.list_cards()}
    assert REQUIRED_CARDS <= set(cards), f"missing cards: {REQUIRED_CARDS - set(cards)}"
    for card in cards.values():
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
    from talkbench.observers import METRIC_SOURCES

    by_metric: dict[str, list[str]] = {}
    for card in weights.list_cards():
        assert set(card.higher_is_better) == set(card.metrics)
        if card.role == "observer":
            assert card.metrics, f"observer card {card.name} names no metric"
            assert card.measures
        if card.protocol != "talklip2023":
            continue  # other protocols' observers (e.g. `mini`) are checked in test_mini_cards_*
        for metric in card.metrics:
            assert metric in METRIC_SOURCES, f"{card.name}: unknown metric {metric}"
            by_metric.setdefault(metric, []).append(card.name)
    model_metrics = {m for m, module in METRIC_SOURCES.items() if not module.endswith("image_quality")}
    assert set(by_metric) == model_metrics  # every network metric has exactly one card
    assert all(len(v) == 1 for v in by_metric.values())
    assert weights.load_card("syncnet-v2").higher_is_better == {"lse_c": True, "lse_d": False, "av_offset": False}
    assert weights.load_card("conformer-lrs2").higher_is_better == {"wer2": False, "wer2_corpus": False}


def test_unreleased_variants_have_no_url_and_explain_themselves(env):
    for name in ("talklip-l", "talklip-lc"):
        card = weights.load_card(name)
        assert not card.released and card.urls == ()
        with pytest.raises(weights.WeightsNotFoundError, match="never released") as info:
            weights.resolve(name)
        assert f"--weights {name}=PATH" in str(info.value)


def test_shipped_cards_come_from_the_repository_in_a_source_checkout(monkeypatch):
    monkeypatch.delenv("TALKBENCH_CARDS", raising=False)
    dirs = weights.card_dirs()
    assert dirs[-1].name in ("observers", "_cards") and dirs[-1].is_dir()
    assert {p.stem for p in dirs[-1].glob("*.toml")} >= REQUIRED_CARDS


def test_unknown_card_suggests_the_closest_name():
    with pytest.raises(weights.CardError, match="Did you mean `syncnet-v2`"):
        weights.load_card("syncnet")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('name = "bad"', 'name = "other"'), "must equal the file name"),
    (lambda t: t.replace('sha256 = "unknown"', 'sha256 = "abc123"'), "64 hex digits"),
    (lambda t: t.replace('role = "observer"', 'role = "oracle"'), "`role` must be one of"),
    (lambda t: t.replace('license = "test"\n', ""), "lacks field"),
    (lambda t: t.replace("lse_c = true", "lse_d = true"), "higher_is_better"),
    (lambda t: t.replace('urls = ["http://x/y"]', "urls = []"), "needs at least one URL"),
    (lambda t: t + "this is = = not toml\n", "cannot read card"),
])
def test_malformed_cards_are_rejected_with_the_file_named(env, edit, message):
    _, cards = env
    path = write_card(cards, "bad", ["http://x/y"])
    path.write_text(edit(path.read_text()))
    with pytest.raises(weights.CardError, match=message) as info:
        weights.parse_card(path)
    assert str(path) in str(info.value)


def test_local_card_folder_overrides_a_shipped_card(env):
    _, cards = env
    write_card(cards, "syncnet-v2", ["http://127.0.0.1:9/x"], file_name="local.model")
    assert weights.load_card("syncnet-v2").file_name == "local.model"
    assert len([c for c in weights.list_cards() if c.name == "syncnet-v2"]) == 1


def test_google_drive_links_become_direct_downloads():
    url = "https://drive.google.com/file/d/1wOsiXKLOeScrU6XuzebYA6Y-9ncd8-le/view?usp=share_link"
    assert weights.direct_url(url) == ("https://drive.usercontent.google.com/download?"
                                       "id=1wOsiXKLOeScrU6XuzebYA6Y-9ncd8-le&export=download&confirm=t")
    plain = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
    assert weights.direct_url(plain) == plain


# ---------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------

def test_sha256_prefix_and_its_cache(env, tmp_path):
    home, _ = env
    path = tmp_path / "blob.bin"
    path.write_bytes(PAYLOAD)
    assert weights.sha256_prefix(path) == PAYLOAD_SHA[:12]
    stored = json.loads((home / "hashes.json").read_text())
    record = stored[str(path.resolve())]
    assert record["sha256"] == PAYLOAD_SHA and record["size"] == len(PAYLOAD)
    # The stored hash is trusted while (size, mtime) are unchanged: a forged record proves no re-read.
    record["sha256"] = "f" * 64
    (home / "hashes.json").write_text(json.dumps(stored))
    weights._memo.clear()
    assert weights.file_sha256(path) == "f" * 64
    # Touching the file (new mtime) forces a recomputation.
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert weights.file_sha256(path) == PAYLOAD_SHA


# ---------------------------------------------------------------------------------------------
# Downloads (127.0.0.1 only)
# ---------------------------------------------------------------------------------------------

def test_download_fresh_file_with_progress_and_sha_check(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    seen: list[tuple[int, int | None]] = []
    path = weights.download("tiny", progress=lambda done, total, label: seen.append((done, total)))
    assert path == weights.cache_path("tiny") and path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) >= 3
    assert server.requests == [("/files/model.bin", None)]
    # Cached and verified: a second call does not touch the network.
    assert weights.download("tiny", progress=False) == path
    assert len(server.requests) == 1


def test_download_resumes_a_partial_file_with_http_range(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    part = weights.cache_path("tiny").with_name("model.bin.part")
    part.parent.mkdir(parents=True)
    have = 1_234_567
    part.write_bytes(PAYLOAD[:have])
    path = weights.download("tiny", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.bin", f"bytes={have}-")]


def test_interrupted_download_leaves_a_part_file_that_the_next_call_completes(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    server.cut_after = 1_500_000
    with pytest.raises(weights.DownloadError, match="tiny"):
        weights.download("tiny", progress=False)
    part = weights.cache_path("tiny").with_name("model.bin.part")
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert not weights.cache_path("tiny").exists()
    have = part.stat().st_size
    assert weights.download("tiny", progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/files/model.bin", f"bytes={have}-")


def test_server_without_range_support_restarts_from_zero(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    part = weights.cache_path("tiny").with_name("model.bin.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not survive")
    server.ignore_range = True
    assert weights.download("tiny", progress=False).read_bytes() == PAYLOAD


def test_corrupt_download_is_deleted_and_reported(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256="0" * 64)
    with pytest.raises(weights.ChecksumError, match=PAYLOAD_SHA):
        weights.download("tiny", progress=False)
    dest = weights.cache_path("tiny")
    assert not dest.exists() and not dest.with_name("model.bin.part").exists()


def test_wrong_file_from_one_url_falls_back_to_the_next(env, server):
    _, cards = env
    server.files["/stale/model.bin"] = PAYLOAD[::-1]
    write_card(cards, "tiny", [server.base + "/stale/model.bin", server.base + "/files/model.bin"],
               sha256=PAYLOAD_SHA)
    assert weights.download("tiny", progress=False).read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/stale/model.bin", "/files/model.bin"]
    assert server.requests[1][1] is None  # the wrong bytes were deleted, not resumed from


def test_complete_part_file_is_verified_without_refetching(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    part = weights.cache_path("tiny").with_name("model.bin.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # e.g. killed between the last byte and the rename
    assert weights.download("tiny", progress=False).read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.bin", f"bytes={len(PAYLOAD)}-")]  # answered 416, no body


def test_published_sha256_prefix_is_checked_when_the_full_hash_is_unknown(env, server):
    _, cards = env
    write_card(cards, "good", [server.base + "/files/model.bin"], sha256_prefix=PAYLOAD_SHA[:10])
    assert weights.download("good", progress=False).read_bytes() == PAYLOAD
    write_card(cards, "bad", [server.base + "/files/model.bin"], sha256_prefix="0123456789")
    with pytest.raises(weights.ChecksumError, match="prefix"):
        weights.download("bad", progress=False)


def test_web_page_instead_of_file_falls_through_to_the_next_url(env, server):
    _, cards = env
    server.html.add("/drive-page")
    write_card(cards, "tiny", [server.base + "/drive-page", server.base + "/missing",
                               server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    assert weights.download("tiny", progress=False).read_bytes() == PAYLOAD
    write_card(cards, "pageonly", [server.base + "/drive-page"], sha256=PAYLOAD_SHA)
    with pytest.raises(weights.DownloadError, match="web page") as info:
        weights.download("pageonly", progress=False)
    assert "--weights pageonly=PATH" in str(info.value)


def test_mirror_is_tried_first(env, server, monkeypatch):
    _, cards = env
    server.files["/mirror/tiny/model.bin"] = PAYLOAD
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    monkeypatch.setenv("TALKBENCH_WEIGHTS_MIRROR", server.base + "/mirror/")
    weights.download("tiny", progress=False)
    assert [p for p, _ in server.requests] == ["/mirror/tiny/model.bin"]


# ---------------------------------------------------------------------------------------------
# resolve()
# ---------------------------------------------------------------------------------------------

def test_resolve_override_wins_and_must_exist(env, tmp_path, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    local = tmp_path / "mine.bin"
    local.write_bytes(b"user's own checkpoint")
    assert weights.resolve("tiny", {"tiny": local}) == local
    with pytest.raises(FileNotFoundError, match=r"--weights tiny=.*nope\.bin"):
        weights.resolve("tiny", {"tiny": tmp_path / "nope.bin"})
    assert server.requests == []
    assert weights.parse_overrides([f"tiny={local}"]) == {"tiny": local}
    with pytest.raises(ValueError, match="NAME=PATH"):
        weights.parse_overrides(["tiny"])
    with pytest.raises(weights.CardError):
        weights.parse_overrides([f"nonexistent-card={local}"])


def test_resolve_without_download_says_how_to_get_the_file(env, server):
    _, cards = env
    url = server.base + "/files/model.bin"
    write_card(cards, "tiny", [url], sha256=PAYLOAD_SHA)
    with pytest.raises(weights.WeightsNotFoundError) as info:
        weights.resolve("tiny", download=False)
    message = str(info.value)
    assert url in message and "talkbench models download tiny" in message and "--weights tiny=PATH" in message
    assert str(weights.cache_path("tiny")) in message
    assert server.requests == []


def test_resolve_downloads_then_uses_the_verified_cache(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    first = weights.resolve("tiny")
    assert first.read_bytes() == PAYLOAD and len(server.requests) == 1
    assert weights.resolve("tiny", download=False) == first
    assert len(server.requests) == 1


def test_resolve_replaces_a_corrupt_cached_file(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    dest = weights.cache_path("tiny")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(weights.ChecksumError, match="differs"):
        weights.resolve("tiny", download=False)
    assert weights.resolve("tiny").read_bytes() == PAYLOAD


def test_unknown_sha256_warns_once_and_pin_then_detects_changes(env, server, caplog):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    with caplog.at_level(logging.WARNING, logger="talkbench.weights"):
        path = weights.resolve("tiny")  # download: no hash to check against
        assert weights.resolve("tiny") == path
        assert weights.resolve("tiny") == path
    using = [r for r in caplog.records if "without a sha256 check" in r.getMessage()]
    assert len(using) == 1
    assert weights.verify_file(weights.load_card("tiny"), path).status == "unverified"
    weights.pin("tiny", weights.file_sha256(path), path.stat().st_size)
    assert weights.expected_sha256(weights.load_card("tiny")) == (PAYLOAD_SHA, "pin")
    assert weights.verify_file(weights.load_card("tiny"), path).status == "ok"
    path.write_bytes(b"changed")
    check = weights.verify_file(weights.load_card("tiny"), path)
    assert check.status == "mismatch" and check.source == "pin"


# ---------------------------------------------------------------------------------------------
# Weights shipped inside the package (card field `bundled`)
# ---------------------------------------------------------------------------------------------

def test_bundled_file_is_used_before_cache_and_override_still_wins(env, tmp_path):
    home, cards = env
    path = write_card(cards, "shipped", [], released=False)
    path.write_text(path.read_text().replace('released = false', 'released = false\nbundled = "data/no_such_file.pt"'))
    card = weights.load_card("shipped")
    assert card.bundled == "data/no_such_file.pt" and card.protocol == "talklip2023"
    assert card.bundled_path() == Path(weights.__file__).resolve().parent / "data" / "no_such_file.pt"
    # bundled file absent: falls back to the cache, then says how to get the file
    with pytest.raises(weights.WeightsNotFoundError):
        weights.resolve("shipped")
    # a bundled file that exists (the package's own PROVENANCE.md stands in for a checkpoint)
    path.write_text(path.read_text().replace("data/no_such_file.pt", "data/PROVENANCE.md"))
    assert weights.resolve("shipped") == Path(weights.__file__).resolve().parent / "data" / "PROVENANCE.md"
    own = tmp_path / "mine.pt"
    own.write_bytes(b"x")
    assert weights.resolve("shipped", {"shipped": own}) == own


@pytest.mark.parametrize("value", ["/abs/file.pt", "../outside.pt", 3])
def test_bundled_path_must_stay_inside_the_package(env, value):
    _, cards = env
    path = write_card(cards, "escape", [], released=False)
    path.write_text(path.read_text().replace('released = false', f'released = false\nbundled = {json.dumps(value)}'))
    with pytest.raises(weights.CardError, match="bundled"):
        weights.load_card("escape")


def test_mini_cards_cover_the_mini_protocol_and_their_files_are_shipped():
    from talkbench.observers import PROTOCOL_SOURCES

    mini = [c for c in weights.list_cards() if c.protocol == "mini"]
    metrics: dict[str, list[str]] = {}
    for card in mini:
        assert card.bundled and not card.released
        path = card.bundled_path()
        assert path is not None and path.is_file(), card.name
        assert card.sha256 is not None and weights.file_sha256(path) == card.sha256, card.name
        assert card.size_bytes == path.stat().st_size
        for metric in card.metrics:
            metrics.setdefault(metric, []).append(card.name)
    assert set(metrics) == set(PROTOCOL_SOURCES["mini"])
    assert all(len(v) == 1 for v in metrics.values())
    total = sum(c.bundled_path().stat().st_size for c in mini)
    assert total < 30_000_000

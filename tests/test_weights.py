"""talkbench.weights: the cache, resolve(), downloads with resume against a 127.0.0.1 server, progress."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from talkbench import weights
from talkbench.cards import CardError, load_card
from test_cards import use_card_folder, write_card


def torch_like_zip(seed: int = 0, size: int = 3_000_000 + 12_345) -> bytes:
    """Bytes laid out as torch.save's zip format (``archive/data.pkl`` + a storage record), built without torch.

    Deterministic (fixed timestamps); the storage record is ``size`` random bytes, so the file spans several
    1 MiB download chunks.
    """
    buf = io.BytesIO()
    records = [("archive/data.pkl", pickle.dumps({"weight": "stand-in"}, protocol=2)),
               ("archive/data/0", np.random.RandomState(seed).bytes(size)), ("archive/version", b"3\n")]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


PAYLOAD = torch_like_zip()  # ~3 MB: several 1 MiB chunks; a readable checkpoint for the format check
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------------------------------------
# A small HTTP server on 127.0.0.1 with Range support and failure modes
# ---------------------------------------------------------------------------------------------

class FileServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1; records every request's path and Range header.

    Failure modes: ``ignore_range`` (always 200 + whole body), ``cut_after`` (the next response sends only
    that many body bytes, then drops the connection), ``html`` (paths answered by a web page), ``pages``
    (path -> HTML body), ``redirects`` (path -> Location), ``no_length`` (paths sent without Content-Length,
    the body ending when the connection closes), ``chunked`` (paths sent with chunked transfer encoding),
    ``etags`` (path -> strong ETag; If-Range is honoured unless ``ignore_if_range``), ``bare_416`` (416
    without Content-Range), ``star_total`` (206 with ``Content-Range: bytes a-b/*``).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.html: set[str] = set()
        self.pages: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.no_length: set[str] = set()
        self.chunked: set[str] = set()
        self.etags: dict[str, str] = {}
        self.ignore_range = False
        self.ignore_if_range = False
        self.bare_416 = False
        self.star_total = False
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        self.if_ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                server.if_ranges.append(self.headers.get("If-Range"))
                if self.path in server.redirects:
                    self._send(302, b"", {"Location": server.redirects[self.path]})
                    return
                if self.path in server.html or self.path in server.pages:
                    body = server.pages.get(
                        self.path, b"<html><body>Google Drive can't scan this file for viruses.</body></html>")
                    self._send(200, body, {"Content-Type": "text/html; charset=utf-8"})
                    return
                path = self.path.split("?")[0]
                data = server.files.get(path)
                if data is None:
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                etag = server.etags.get(path)
                if_range = self.headers.get("If-Range")
                stale = bool(if_range and etag and if_range != etag and not server.ignore_if_range)
                start = 0
                match = re.match(r"bytes=(\d+)-$", rng or "")
                if match and not server.ignore_range and not stale:
                    start = int(match.group(1))
                    if start >= len(data):
                        self._send(416, b"", {} if server.bare_416 else {"Content-Range": f"bytes */{len(data)}"})
                        return
                    total = "*" if server.star_total else str(len(data))
                    headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{total}"}
                    status = 206
                else:
                    headers, status = {}, 200
                headers["Content-Type"] = "application/octet-stream"
                if etag:
                    headers["ETag"] = etag
                body = data[start:]
                cut, server.cut_after = server.cut_after, None
                mode = "close" if path in server.no_length else "chunked" if path in server.chunked else "length"
                self._send(status, body, headers, cut=cut, mode=mode)

            def _send(self, status, body, headers, cut=None, mode="length"):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if mode == "length":
                    self.send_header("Content-Length", str(len(body)))
                elif mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                if cut is not None or mode == "close":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                sent = body if cut is None else body[:cut]
                if mode == "chunked":
                    for i in range(0, len(sent), 1 << 16):
                        piece = sent[i:i + (1 << 16)]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    if cut is None:
                        self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(sent)
                self.wfile.flush()

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


def write_part(name: str, data: bytes, url: str | None, **validators: object) -> Path:
    """A ``.part`` file for card ``name`` as an interrupted download from ``url`` leaves it (sidecar included)."""
    part = weights.cache_path(name).with_name(weights.cache_path(name).name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    if url is not None:
        part.with_name(part.name + ".json").write_text(json.dumps({"url": url, **validators}))
    return part


@pytest.fixture
def server():
    srv = FileServer()
    srv.files["/files/model.bin"] = PAYLOAD
    yield srv
    srv.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh cache home and a card folder searched before the shipped cards; no mirror, no progress display."""
    monkeypatch.delenv("TALKBENCH_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setattr(weights, "_warned_unknown", set())
    monkeypatch.setattr(weights, "_progress_factory", None)
    return use_card_folder(tmp_path, monkeypatch)


# ---------------------------------------------------------------------------------------------
# Unreleased cards, Google Drive links
# ---------------------------------------------------------------------------------------------

def test_unreleased_variants_have_no_url_and_explain_themselves(env):
    for name in ("talklip-l", "talklip-lc"):
        card = load_card(name)
        assert not card.released and card.urls == ()
        with pytest.raises(weights.WeightsNotFoundError, match="never released") as info:
            weights.resolve(name)
        assert f"--weights {name}=PATH" in str(info.value)


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
    assert weights.download("tiny") == path
    assert len(server.requests) == 1


def test_download_resumes_a_partial_file_with_http_range(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    have = 1_234_567
    write_part("tiny", PAYLOAD[:have], server.base + "/files/model.bin")
    path = weights.download("tiny")
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.bin", f"bytes={have}-")]


def test_interrupted_download_leaves_a_part_file_that_the_next_call_completes(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    server.cut_after = 1_500_000
    with pytest.raises(weights.DownloadError, match="tiny"):
        weights.download("tiny")
    part = weights.cache_path("tiny").with_name("model.bin.part")
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert not weights.cache_path("tiny").exists()
    have = part.stat().st_size
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/files/model.bin", f"bytes={have}-")


def test_server_without_range_support_restarts_from_zero(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    write_part("tiny", b"garbage that must not survive", server.base + "/files/model.bin")
    server.ignore_range = True
    assert weights.download("tiny").read_bytes() == PAYLOAD


def test_corrupt_download_is_deleted_and_reported(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256="0" * 64)
    with pytest.raises(weights.ChecksumError, match=PAYLOAD_SHA):
        weights.download("tiny")
    dest = weights.cache_path("tiny")
    assert not dest.exists() and not dest.with_name("model.bin.part").exists()


def test_wrong_file_from_one_url_falls_back_to_the_next(env, server):
    _, cards = env
    server.files["/stale/model.bin"] = PAYLOAD[::-1]
    write_card(cards, "tiny", [server.base + "/stale/model.bin", server.base + "/files/model.bin"],
               sha256=PAYLOAD_SHA)
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/stale/model.bin", "/files/model.bin"]
    assert server.requests[1][1] is None  # the wrong bytes were deleted, not resumed from


def test_complete_part_file_is_verified_without_refetching(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    write_part("tiny", PAYLOAD, server.base + "/files/model.bin")  # killed between the last byte and the rename
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.bin", f"bytes={len(PAYLOAD)}-")]  # answered 416, no body


def test_published_sha256_prefix_is_checked_when_the_full_hash_is_unknown(env, server):
    _, cards = env
    write_card(cards, "good", [server.base + "/files/model.bin"], sha256_prefix=PAYLOAD_SHA[:10])
    assert weights.download("good").read_bytes() == PAYLOAD
    write_card(cards, "bad", [server.base + "/files/model.bin"], sha256_prefix="0123456789")
    with pytest.raises(weights.ChecksumError, match="prefix"):
        weights.download("bad")


def test_web_page_instead_of_file_falls_through_to_the_next_url(env, server):
    _, cards = env
    server.html.add("/drive-page")
    write_card(cards, "tiny", [server.base + "/drive-page", server.base + "/missing",
                               server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    assert weights.download("tiny").read_bytes() == PAYLOAD
    write_card(cards, "pageonly", [server.base + "/drive-page"], sha256=PAYLOAD_SHA)
    with pytest.raises(weights.DownloadError, match="web page") as info:
        weights.download("pageonly")
    assert "--weights pageonly=PATH" in str(info.value)


def test_mirror_is_tried_first(env, server, monkeypatch):
    _, cards = env
    server.files["/mirror/tiny/model.bin"] = PAYLOAD
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    monkeypatch.setenv("TALKBENCH_WEIGHTS_MIRROR", server.base + "/mirror/")
    weights.download("tiny")
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
    with pytest.raises(CardError):
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
    dest.write_bytes(PAYLOAD[:1000] + bytes([PAYLOAD[1000] ^ 1]) + PAYLOAD[1001:])  # one bit flipped
    with pytest.raises(weights.ChecksumError, match="differs"):
        weights.resolve("tiny", download=False)
    assert weights.resolve("tiny").read_bytes() == PAYLOAD


def test_resolve_with_sha_gives_the_path_and_its_sha256_prefix(env, server, tmp_path):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    assert weights.resolve_with_sha("tiny") == (weights.cache_path("tiny"), PAYLOAD_SHA[:12])
    local = tmp_path / "mine.bin"
    local.write_bytes(b"user's own checkpoint")
    expected = hashlib.sha256(b"user's own checkpoint").hexdigest()[:12]
    assert weights.resolve_with_sha("tiny", {"tiny": local}) == (local, expected)
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------------------------
# Progress: a callback, else the installed display, else log lines; never drawn by this module
# ---------------------------------------------------------------------------------------------

def test_weights_draws_nothing_itself():
    code = "import sys, talkbench.weights; print(sorted(m for m in ('rich', 'tqdm') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_downloads_log_their_progress_every_tenth_without_a_callback(env, server, caplog):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    with caplog.at_level(logging.INFO, logger="talkbench.weights"):
        weights.resolve("tiny")
    lines = [r.getMessage() for r in caplog.records if "downloaded" in r.getMessage()]
    assert lines and len(lines) <= 12, lines
    assert all(line.startswith("tiny: downloaded ") for line in lines)
    assert lines[-1].endswith("(100 %)")
    report = weights.logging_progress()  # without a known total: the first bytes, then every 100 MiB
    with caplog.at_level(logging.INFO, logger="talkbench.weights"):
        caplog.clear()
        for done in range(1 << 20, 300 << 20, 1 << 20):
            report(done, None, "big")
    assert [r.getMessage() for r in caplog.records] == [
        "big: downloaded 1.0 MiB", "big: downloaded 101.0 MiB", "big: downloaded 201.0 MiB"]


def test_installed_display_shows_automatic_downloads_and_is_closed_on_failure(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    write_card(cards, "gone", [server.base + "/nothing-here"])
    events: list[tuple] = []

    def display():
        events.append(("open",))
        return (lambda done, total, label: events.append((label, done, total))), lambda: events.append(("close",))

    assert weights.set_download_progress(display) is None
    try:
        weights.resolve("tiny")
        assert events[0] == ("open",) and events[-1] == ("close",)
        assert events[-2] == ("tiny", len(PAYLOAD), len(PAYLOAD))
        events.clear()
        with pytest.raises(weights.DownloadError):
            weights.resolve("gone")
        assert events == [("open",), ("close",)]  # a failed download closes its display too
        events.clear()
        weights.resolve("tiny")  # cached: no display at all
        assert events == []
        seen: list[int] = []  # the caller's own callback wins over the installed display
        weights.download("tiny", progress=lambda done, total, label: seen.append(done), force=True)
        assert events == [] and seen[-1] == len(PAYLOAD)
    finally:
        assert weights.set_download_progress(None) is display


def test_unknown_sha256_warns_once_and_pin_then_detects_changes(env, server, caplog):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    with caplog.at_level(logging.WARNING, logger="talkbench.weights"):
        path = weights.resolve("tiny")  # download: no hash to check against
        assert weights.resolve("tiny") == path
        assert weights.resolve("tiny") == path
    using = [r for r in caplog.records if "without a sha256 check" in r.getMessage()]
    assert len(using) == 1
    assert weights.verify_file(load_card("tiny"), path).status == "unverified"
    weights.pin("tiny", weights.file_sha256(path), path.stat().st_size)
    assert weights.expected_sha256(load_card("tiny")) == (PAYLOAD_SHA, "pin")
    assert weights.verify_file(load_card("tiny"), path).status == "ok"
    path.write_bytes(b"changed")
    check = weights.verify_file(load_card("tiny"), path)
    assert check.status == "mismatch" and check.source == "pin"


# ---------------------------------------------------------------------------------------------
# Weights shipped inside the package (card field `bundled`)
# ---------------------------------------------------------------------------------------------

def test_bundled_file_is_used_before_cache_and_override_still_wins(env, tmp_path):
    home, cards = env
    path = write_card(cards, "shipped", [], released=False)
    path.write_text(path.read_text().replace('released = false', 'released = false\nbundled = "data/no_such_file.pt"'))
    card = load_card("shipped")
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


# ---------------------------------------------------------------------------------------------
# Cards cannot make talkbench write outside $TALKBENCH_HOME or read local files
# ---------------------------------------------------------------------------------------------


def test_download_and_resolve_never_write_outside_the_cache(env, server, tmp_path):
    home, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    card = load_card("tiny")
    for bad in ("../../escaped.bin", str(tmp_path / "escaped.bin")):
        forged = dataclasses.replace(card, file_name=bad)  # a Card built in code skips parse_card's check
        with pytest.raises(CardError, match="file_name|outside"):
            weights.cache_path(forged)
        with pytest.raises(CardError):
            weights.download(forged)
    # The escaping card in a card folder: `evaluate`'s automatic download (resolve) refuses it too.
    (cards / "tiny.toml").write_text((cards / "tiny.toml").read_text().replace('"model.bin"', '"../../escaped.bin"'))
    with pytest.raises(CardError, match="tiny.toml"):
        weights.resolve("tiny")
    assert server.requests == []
    assert not list(tmp_path.rglob("escaped.bin*"))


def test_file_urls_are_refused_at_fetch_time_card_and_mirror(env, server, tmp_path, monkeypatch):
    _, cards = env
    secret = tmp_path / "secret.bin"
    secret.write_bytes(PAYLOAD)  # even a file that looks right must not be "downloaded" from disk
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    forged = dataclasses.replace(load_card("tiny"), urls=(secret.as_uri(),))
    with pytest.raises(weights.DownloadError, match="only http") as info:
        weights.download(forged)
    assert secret.as_uri() in str(info.value)
    assert not weights.cache_path("tiny").exists()
    # A file: mirror is skipped (with its reason logged), the card's http URL is used.
    mirror = tmp_path / "mirror"
    (mirror / "tiny").mkdir(parents=True)
    (mirror / "tiny" / "model.bin").write_bytes(torch_like_zip(seed=5, size=100))
    monkeypatch.setenv("TALKBENCH_WEIGHTS_MIRROR", mirror.as_uri())
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/files/model.bin"]


def test_redirect_to_a_local_file_is_refused(env, server, tmp_path):
    _, cards = env
    secret = tmp_path / "secret.bin"
    secret.write_bytes(PAYLOAD)
    server.redirects["/jump"] = secret.as_uri()
    write_card(cards, "tiny", [server.base + "/jump"])
    with pytest.raises(weights.DownloadError, match="refused|not allowed"):
        weights.download("tiny")
    assert not weights.cache_path("tiny").exists()


# ---------------------------------------------------------------------------------------------
# Broken downloads are never cached when no sha256 is known (every official card today)
# ---------------------------------------------------------------------------------------------

def test_body_cut_short_without_content_length_is_resumed_not_cached(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])  # sha256 unknown
    server.no_length.add("/files/model.bin")
    server.cut_after = 1_000_000
    path = weights.download("tiny")
    assert path.read_bytes() == PAYLOAD
    # the short body ended with the connection: talkbench asked for the rest instead of trusting it
    assert server.requests == [("/files/model.bin", None), ("/files/model.bin", "bytes=1000000-")]


def test_unconfirmable_body_without_content_length_is_refused(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    server.no_length.add("/files/model.bin")
    server.ignore_range = True  # cannot confirm the size by asking for the bytes after the end
    server.cut_after = 1_000_000
    with pytest.raises(weights.DownloadError, match="cannot be confirmed") as info:
        weights.download("tiny")
    assert server.base + "/files/model.bin" in str(info.value)
    dest = weights.cache_path("tiny")
    assert not dest.exists() and not dest.with_name("model.bin.part").exists()


def test_complete_body_without_content_length_is_confirmed_by_a_range_probe(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    server.no_length.add("/files/model.bin")
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/files/model.bin", f"bytes={len(PAYLOAD)}-")  # answered 416 bytes */N


def test_chunked_body_is_complete_only_with_its_last_chunk(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    server.chunked.add("/files/model.bin")
    server.cut_after = 1_500_000
    with pytest.raises(weights.DownloadError, match="IncompleteRead|Incomplete"):
        weights.download("tiny")
    assert not weights.cache_path("tiny").exists()
    assert weights.download("tiny").read_bytes() == PAYLOAD  # resumed, then the last chunk came
    assert server.requests[-1][1] is not None


@pytest.mark.parametrize("part_bytes, bare", [(PAYLOAD + b"trailing garbage", False),
                                             (PAYLOAD[::-1][:len(PAYLOAD)], True)])
def test_416_is_not_taken_as_complete_unless_the_total_matches(env, server, part_bytes, bare):
    _, cards = env
    url = server.base + "/files/model.bin"
    write_card(cards, "tiny", [url])
    part = write_part("tiny", part_bytes, url)
    server.bare_416 = bare  # 416 without Content-Range: nothing confirms the part
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.bin", f"bytes={len(part_bytes)}-"), ("/files/model.bin", None)]
    assert not part.exists() and not part.with_name(part.name + ".json").exists()


def test_part_from_another_url_is_never_spliced(env, server):
    _, cards = env
    other = torch_like_zip(seed=1)
    server.files["/old/model.bin"] = other
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    write_part("tiny", other[:1_000_000], server.base + "/old/model.bin")
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.bin", None)]
    # A .part without a sidecar (its URL unknown) is not resumed either.
    weights.cache_path("tiny").unlink()
    write_part("tiny", other[:1_000_000], None)
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/files/model.bin", None)


@pytest.mark.parametrize("ignore_if_range", [False, True])
def test_changed_file_on_the_server_restarts_the_download(env, server, ignore_if_range):
    _, cards = env
    url = server.base + "/files/model.bin"
    old = torch_like_zip(seed=1)
    write_card(cards, "tiny", [url])
    write_part("tiny", old[:1_000_000], url, etag='"v1"', total=len(old))
    server.etags["/files/model.bin"] = '"v2"'
    server.ignore_if_range = ignore_if_range  # then the 206's new ETag gives the change away
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests[0] == ("/files/model.bin", "bytes=1000000-") and server.if_ranges[0] == '"v1"'
    if ignore_if_range:  # 206 with ETag "v2": the part is dropped and the file fetched again from zero
        assert server.requests[1:] == [("/files/model.bin", None)]
    else:  # the server itself answered If-Range "v1" with the whole new file (200)
        assert len(server.requests) == 1


def test_sidecar_records_the_validator_and_a_resume_sends_if_range(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"])
    server.etags["/files/model.bin"] = '"abc"'
    server.cut_after = 1_200_000
    with pytest.raises(weights.DownloadError, match="1200000 of"):
        weights.download("tiny")
    part = weights.cache_path("tiny").with_name("model.bin.part")
    meta = json.loads(part.with_name("model.bin.part.json").read_text())
    assert meta["url"] == server.base + "/files/model.bin" and meta["etag"] == '"abc"'
    assert meta["total"] == len(PAYLOAD)
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/files/model.bin", "bytes=1200000-") and server.if_ranges[-1] == '"abc"'
    assert not part.with_name("model.bin.part.json").exists()


def test_206_without_a_known_total_is_refused(env, server):
    _, cards = env
    url = server.base + "/files/model.bin"
    write_card(cards, "tiny", [url])
    write_part("tiny", PAYLOAD[:1_000_000], url)
    server.star_total = True
    with pytest.raises(weights.DownloadError, match="Content-Range") as info:
        weights.download("tiny")
    assert url in str(info.value)
    assert not weights.cache_path("tiny").exists()


def test_file_that_is_not_a_checkpoint_is_not_cached(env, server):
    _, cards = env
    url = server.base + "/files/garbage.bin"
    server.files["/files/garbage.bin"] = np.random.RandomState(3).bytes(2_000_000)
    server.files["/files/truncated.bin"] = PAYLOAD[:-200]  # a zip without its central directory
    write_card(cards, "tiny", [url, server.base + "/files/truncated.bin"])
    with pytest.raises(weights.DownloadError, match="not a torch checkpoint") as info:
        weights.download("tiny")
    message = str(info.value)
    assert url in message and "truncated" in message
    dest = weights.cache_path("tiny")
    assert not dest.exists() and not dest.with_name("model.bin.part").exists()


def test_checkpoint_check_accepts_real_torch_files_without_unpickling(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    new = tmp_path / "new.pt"
    torch.save(state, new)
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert weights.checkpoint_problem(new) is None
    assert weights.checkpoint_problem(legacy) is None
    assert weights.checkpoint_problem(tmp_path / "missing.pt") is not None
    page = tmp_path / "page.pt"
    page.write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    assert "HTML" in weights.checkpoint_problem(page)
    evil = tmp_path / "evil.pt"  # a pickle that would run code if loaded: inspected only, never executed
    evil.write_bytes(pickle.dumps(os.system) + b"...")
    assert "not a torch checkpoint" in weights.checkpoint_problem(evil)


def test_google_drive_confirmation_form_is_followed_once(env, server):
    _, cards = env
    form = (f'<html><body><form id="download-form" action="{server.base}/files/model.bin" method="get">'
            '<input type="hidden" name="id" value="abc"><input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="u-1"></form></body></html>').encode()
    server.pages["/drive-form"] = form
    write_card(cards, "tiny", [server.base + "/drive-form"], sha256=PAYLOAD_SHA)
    assert weights.download("tiny").read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/drive-form", "/files/model.bin?id=abc&confirm=t&uuid=u-1"]
    # A form that points to another host is not followed.
    server.pages["/evil-form"] = form.replace(server.base.encode(), b"http://localhost:9")
    write_card(cards, "evil", [server.base + "/evil-form"], sha256=PAYLOAD_SHA)
    with pytest.raises(weights.DownloadError, match="web page"):
        weights.download("evil")


def test_failed_download_says_how_to_get_the_file_by_hand_not_to_rerun_the_download(env, server):
    _, cards = env
    url = server.base + "/nothing-here"
    write_card(cards, "tiny", [url])
    with pytest.raises(weights.DownloadError) as info:
        weights.download("tiny")
    message = str(info.value)
    assert "models download" not in message
    assert url in message and "404" in message and str(weights.cache_path("tiny")) in message
    assert "--weights tiny=PATH" in message
    # The automatic download of resolve() (what `evaluate` does) fails with the same advice.
    with pytest.raises(weights.DownloadError) as info:
        weights.resolve("tiny")
    assert "models download" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Hashing: verify re-reads the file
# ---------------------------------------------------------------------------------------------

def test_verify_rehashes_a_file_modified_with_size_and_mtime_kept(env, server):
    _, cards = env
    write_card(cards, "tiny", [server.base + "/files/model.bin"], sha256=PAYLOAD_SHA)
    path = weights.download("tiny")
    card = load_card("tiny")
    assert weights.verify_file(card, path).status == "ok"
    st = path.stat()
    path.write_bytes(PAYLOAD[:1000] + bytes([PAYLOAD[1000] ^ 1]) + PAYLOAD[1001:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.verify_file(card, path).status == "ok"  # resolve's fast path trusts the memo ...
    check = weights.verify_file(card, path, trust_memo=False)  # ... verify does not
    assert check.status == "mismatch"
    assert weights.verify_file(card, path).status == "mismatch"  # and the memo now knows


# ---------------------------------------------------------------------------------------------
# --weights items
# ---------------------------------------------------------------------------------------------

def test_parse_overrides_checks_the_path_and_suggests_card_names(env, tmp_path):
    local = tmp_path / "mini.pt"
    local.write_bytes(b"x")
    assert weights.parse_overrides([f"mini-syncnet={local}"]) == {"mini-syncnet": local}
    with pytest.raises(CardError, match="Did you mean `mini-syncnet`") as info:
        weights.parse_overrides([f"mini-syncnt={local}"])
    message = str(info.value)
    assert f"--weights mini-syncnt={local}" in message and "Known cards:" in message and "syncnet-v2" in message
    with pytest.raises(weights.WeightsNotFoundError, match="is a directory") as info:
        weights.parse_overrides([f"mini-syncnet={tmp_path}"])
    assert f"--weights mini-syncnet={tmp_path}" in str(info.value) and "mini-syncnet.pt" in str(info.value)
    with pytest.raises(weights.WeightsNotFoundError, match="does not exist"):
        weights.parse_overrides([f"mini-syncnet={tmp_path / 'nope.pt'}"])
    assert isinstance(weights.WeightsNotFoundError("x"), FileNotFoundError)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_parse_overrides_refuses_an_unreadable_file(env, tmp_path):
    local = tmp_path / "locked.pt"
    local.write_bytes(b"x")
    local.chmod(0)
    with pytest.raises(weights.WeightsNotFoundError, match="cannot be read"):
        weights.parse_overrides([f"mini-syncnet={local}"])

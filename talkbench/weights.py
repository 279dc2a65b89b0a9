"""The checkpoint cache, downloads with resume, sha256 checks, and resolution of a card to a local file.

The cards themselves (what each checkpoint is, read from ``cards/*.toml``) are :mod:`talkbench.cards`; this
module finds, fetches and checks the files they describe.

Where files live:
    ``$TALKBENCH_HOME`` (default ``~/.cache/talkbench``)
    ├── weights/<card name>/<file name>        verified downloads (``.part`` + ``.part.json`` while downloading)
    ├── pins.json       sha256 recorded by ``talkbench models verify --pin`` for cards whose sha256 is unknown
    └── hashes.json     sha256 of files already hashed, keyed by (path, size, mtime), so a 1 GB file is
                        hashed once, not on every run

Environment:
    ``TALKBENCH_HOME``            the cache root.
    ``TALKBENCH_WEIGHTS_MIRROR``  base URL tried before a card's own URLs: ``<mirror>/<name>/<file_name>``.

The resolution order of :func:`resolve` is: ``--weights NAME=PATH`` override, else the file shipped in the
package, else the cached file when its sha256 matches, else a download (verified), else an error that says how
to get the file. :func:`resolve_with_sha` adds the sha256 prefix an observer records as provenance.

Progress: this module draws nothing. A download reports ``(bytes done, total or None, label)`` to the callback
its caller passes, else to the reporter installed with :func:`set_download_progress` (the CLI installs a rich bar
there once at startup), else it logs at INFO every ~10 %.

Downloads (why not pooch or gdown): a download is written to ``<file>.part`` next to a ``<file>.part.json``
sidecar that records the URL, the server's validator (strong ETag, else Last-Modified) and the total size; a
rerun resumes with ``Range`` + ``If-Range`` only from the same URL and validator, and restarts from zero
otherwise. A ``.part`` is promoted only when the server confirmed its end (``Content-Length``, ``Content-Range``
``a-b/TOTAL`` or ``bytes */TOTAL``, or the last chunk of a chunked body), its sha256 matches (card, pin or
published prefix) and, when no full sha256 is known, it looks like a torch checkpoint (:func:`checkpoint_problem`:
inspected, never unpickled). Only http(s) is fetched, redirects included. Well-kept libraries were weighed:
pooch (SciPy, scikit-image) downloads atomically with a hash check and a tqdm bar, but does not resume (a dropped
1.9 GB AV-HuBERT download starts again from zero) and has no Google Drive support; gdown (6.5) resumes and
follows Drive's confirmation form, but picks up a leftover ``.part`` by file-name prefix without recording its
URL or validator (its ``If-Range`` comes from the new response, so across runs a changed file can still be
spliced), reports with tqdm/``print`` rather than ``logging``, and brings requests, beautifulsoup4, filelock
and tqdm. Neither does resume + hash check + the Drive flow better than this module's standard-library code,
so talkbench keeps no download dependency: Drive links are rewritten to
``drive.usercontent.google.com/download?...&confirm=t`` (which skips the virus-scan page), and if Drive still
answers with its ``download-form`` page, the form is followed once (same host, GET), as gdown does.
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import json
import logging
import os
import pickletools
import re
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from talkbench import cards
from talkbench.cards import WeightsError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB: read/write/hash granularity


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No usable local file for a card (and downloading was not allowed or not possible)."""


class ChecksumError(WeightsError):
    """A file's sha256 differs from the one its card (or pin) expects."""


class DownloadError(WeightsError):
    """Every URL of a card failed; the message lists why, URL by URL."""


# --------------------------------------------------------------------------------------------------
# Cache, pins, hashes
# --------------------------------------------------------------------------------------------------

def home() -> Path:
    """The cache root: ``$TALKBENCH_HOME`` or ``~/.cache/talkbench``."""
    return Path(os.environ.get("TALKBENCH_HOME") or Path.home() / ".cache" / "talkbench").expanduser()


def safe_cache_path(name: str, file_name: str) -> Path:
    """``$TALKBENCH_HOME/weights/<name>/<file_name>``, refusing anything that would land outside that folder.

    Raises:
        cards.CardError: ``name`` or ``file_name`` is not a plain name, or the path lies (through ``..`` or an
            absolute path) outside the card's cache folder.
    """
    where = f"weights card `{name}`"
    cards.check_card_name(name, where)
    cards.check_file_name(file_name, where)
    folder = home() / "weights" / name
    path = folder / file_name
    # Lexical check (a symlink the user put at the cache path on purpose is fine: downloads replace the link).
    if Path(os.path.normpath(path)).parent != Path(os.path.normpath(folder)):
        raise cards.CardError(f"{where}: its file {path} lies outside the card's cache folder {folder}; "
                        "fix `file_name` in the card.")
    return path


def cache_path(card: cards.Card | str) -> Path:
    """Where the verified file of ``card`` lives (whether or not it is there).

    Raises:
        cards.CardError: the card's ``file_name`` would put the file outside ``$TALKBENCH_HOME/weights/<name>/``
            (checked here again although :func:`talkbench.cards.parse_card` rejects it, for cards built in
            code).
    """
    card = cards.load_card(card) if isinstance(card, str) else card
    try:
        return safe_cache_path(card.name, card.file_name)
    except cards.CardError as err:
        where = card.card_path or f"weights card `{card.name}`"
        raise cards.CardError(f"{where}: {err}", card.card_path) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("%s is unreadable (%s); ignoring it", path, err)
        return {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write (tmp file + rename), so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


_lock = threading.Lock()
_memo: dict[tuple[str, int, int], str] = {}
_warned_unknown: set[str] = set()


def _hash_file(path: Path) -> str:
    """sha256 of the bytes of ``path`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path, trust_memo: bool = True) -> str:
    """Full sha256 of a file, remembered by (resolved path, size, mtime) in memory and in ``hashes.json``.

    Args:
        path: the file.
        trust_memo: reuse a digest remembered for the same (path, size, mtime). False reads and hashes
            the whole file (``talkbench models verify`` does: a file rewritten with its size and mtime
            kept would otherwise pass), then refreshes the memo.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if trust_memo:
        with _lock:
            if key in _memo:
                return _memo[key]
        stored = _read_json(home() / "hashes.json").get(str(path))
        if (isinstance(stored, dict) and stored.get("size") == st.st_size and stored.get("mtime_ns") == st.st_mtime_ns
                and cards.is_sha256(stored.get("sha256"))):
            with _lock:
                _memo[key] = stored["sha256"]
            return stored["sha256"]
    digest = _hash_file(path)
    _remember_hash(path, st.st_size, st.st_mtime_ns, digest)
    with _lock:
        _memo[key] = digest
    return digest


def _remember_hash(path: Path, size: int, mtime_ns: int, digest: str) -> None:
    store_path = home() / "hashes.json"
    try:
        with _lock:
            data = _read_json(store_path)
            data = {p: v for p, v in data.items() if Path(p).exists()}  # forget deleted files
            data[str(path)] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
            _write_json(store_path, data)
    except OSError as err:  # a read-only home must not stop a run
        logger.debug("could not record hash of %s: %s", path, err)


def sha256_prefix(path: str | Path) -> str:
    """First 12 hex digits of the file's sha256 (for provenance columns: ``card=prefix``)."""
    return file_sha256(path)[:12]


def pins() -> dict[str, dict[str, Any]]:
    """sha256 recorded locally for cards whose published sha256 is unknown (card name -> record)."""
    return _read_json(home() / "pins.json")


def pin(card: cards.Card | str, digest: str, size: int) -> None:
    """Record ``digest`` as the expected sha256 of ``card`` on this machine."""
    card = cards.load_card(card) if isinstance(card, str) else card
    data = pins()
    data[card.name] = {"sha256": digest, "size_bytes": size, "file_name": card.file_name,
                       "pinned": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(home() / "pins.json", data)


def expected_sha256(card: cards.Card) -> tuple[str | None, str]:
    """(expected digest or None, where it comes from: ``card`` | ``pin`` | ``unknown``)."""
    if card.sha256:
        return card.sha256, "card"
    pinned = pins().get(card.name)
    if pinned and cards.is_sha256(pinned.get("sha256")):
        return pinned["sha256"], "pin"
    return None, cards.UNKNOWN


@dataclass(frozen=True)
class Verification:
    """Result of checking one local file against its card.

    Attributes:
        status: ``ok`` (sha256 matches card or pin), ``unverified`` (no sha256 known; prefix checked
            when the card has one), ``mismatch``, or ``missing``.
        sha256: the file's digest ('' when missing).
        expected: the expected digest, or None.
        source: where ``expected`` comes from: ``card``, ``pin`` or ``unknown``.
        message: one sentence for humans.
    """

    status: str
    sha256: str
    expected: str | None
    source: str
    message: str


def verify_file(card: cards.Card, path: Path, trust_memo: bool = True) -> Verification:
    """Hash ``path`` and compare it with the card's sha256 (or the local pin, or the published prefix).

    Args:
        card: the card whose file ``path`` should be.
        path: the file to check.
        trust_memo: passed to :func:`file_sha256`; False re-reads the whole file (``models verify``).
    """
    if not path.is_file():
        return Verification("missing", "", None, cards.UNKNOWN, f"{path} does not exist")
    digest = file_sha256(path, trust_memo=trust_memo)
    expected, source = expected_sha256(card)
    if expected is not None:
        if digest == expected:
            return Verification("ok", digest, expected, source, f"sha256 matches the {source}")
        return Verification("mismatch", digest, expected, source,
                            f"sha256 {digest} differs from the {source}'s {expected}")
    if card.sha256_prefix and not digest.startswith(card.sha256_prefix):
        return Verification("mismatch", digest, None, "prefix",
                            f"sha256 {digest} does not start with the published prefix {card.sha256_prefix}")
    extra = f" (published prefix {card.sha256_prefix} matches)" if card.sha256_prefix else ""
    return Verification("unverified", digest, None, cards.UNKNOWN, f"no published sha256{extra}")


# --------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------

_GDRIVE = re.compile(r"^https?://drive\.google\.com/(?:file/d/|open\?id=|uc\?(?:export=download&)?id=)([\w-]+)")

#: Progress callback: (bytes done, total bytes or None, label). The label is the card name.
ProgressFn = Callable[[int, "int | None", str], None]
#: Opens a progress display for one download: returns its callback and the function that closes the display
#: (called when the download ends, whether it succeeded or failed).
ProgressFactory = Callable[[], tuple[ProgressFn, Callable[[], None]]]

_progress_factory: ProgressFactory | None = None
_LOG_STEP_UNKNOWN_TOTAL = 100 << 20  # without a known total, log every 100 MiB


def set_download_progress(factory: ProgressFactory | None) -> ProgressFactory | None:
    """Install how downloads report progress when their caller passes no callback; returns the previous one.

    The CLI installs a rich bar here once at startup, so the automatic downloads of :func:`resolve` (during
    ``evaluate``, ``generate``, ...) draw it; None goes back to logging (:func:`logging_progress`).

    Args:
        factory: called once per download; returns ``(callback, close)``. ``close`` is called when that download
            ends, also when it fails, so a display never outlives its download.
    """
    global _progress_factory
    previous, _progress_factory = _progress_factory, factory
    return previous


def logging_progress() -> ProgressFn:
    """A progress callback that logs at INFO: a download's first bytes, every ~10 % after, and its end.

    Without a known total it logs every 100 MiB. Each label (card) is followed separately.
    """
    logged: dict[str, int] = {}

    def report(done: int, total: int | None, label: str) -> None:
        last = logged.get(label)
        step = max(total // 10, 1) if total else _LOG_STEP_UNKNOWN_TOTAL
        finished = total is not None and done >= total > (last or 0)
        if last is not None and done - last < step and not finished:
            return
        logged[label] = done
        if total:
            logger.info("%s: downloaded %.1f of %.1f MiB (%d %%)", label, done / 2**20, total / 2**20,
                        100 * done // total)
        else:
            logger.info("%s: downloaded %.1f MiB", label, done / 2**20)

    return report


def _reporter(progress: ProgressFn | None) -> tuple[ProgressFn, Callable[[], None]]:
    """(callback, close) for one download: the caller's callback, else the installed factory's, else logging."""
    if progress is not None:
        return progress, _nothing
    if _progress_factory is not None:
        return _progress_factory()
    return logging_progress(), _nothing


def _nothing() -> None:
    """The close function of a callback that has no display to close."""


def direct_url(url: str) -> str:
    """The URL to fetch for a card URL.

    Google Drive "view" links (how the TalkLip and MVM READMEs give their checkpoints) return a web
    page; the file itself is served by ``drive.usercontent.google.com/download`` with ``confirm=t``,
    which skips the "file too large to scan" page. Other URLs are returned unchanged.
    """
    match = _GDRIVE.match(url)
    if match:
        return f"https://drive.usercontent.google.com/download?id={match.group(1)}&export=download&confirm=t"
    return url


def candidate_urls(card: cards.Card) -> list[str]:
    """Mirror URL (if ``$TALKBENCH_WEIGHTS_MIRROR`` is set) then the card's URLs, made direct."""
    urls = []
    mirror = os.environ.get("TALKBENCH_WEIGHTS_MIRROR", "").rstrip("/")
    if mirror:
        urls.append(f"{mirror}/{urllib.parse.quote(card.name)}/{urllib.parse.quote(card.file_name)}")
    urls.extend(direct_url(u) for u in card.urls)
    return urls


class _HttpOnlyRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only: a redirect to ``file:``, ``ftp:``, ``data:`` ... is refused."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if not cards.is_http_url(newurl):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl!r} refused (only http:// and "
                                         "https:// are followed)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """An opener that speaks http(s) only (no file:, ftp: or data: handler) and refuses other redirects."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirect(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class _DownloadFormParser(html.parser.HTMLParser):
    """Finds Google Drive's ``<form id="download-form">`` ("can't scan this file for viruses") and its fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.method = "get"
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "form" and attr.get("id") == "download-form" and self.action is None:
            self.action, self.method, self._inside = attr.get("action", ""), attr.get("method", "get").lower(), True
        elif tag == "input" and self._inside and attr.get("type", "").lower() == "hidden" and attr.get("name"):
            self.fields[attr["name"]] = attr.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def _download_form_url(page: bytes, page_url: str) -> str | None:
    """The URL Google Drive's confirmation page submits to (same host, GET, http(s)), or None."""
    parser = _DownloadFormParser()
    try:
        parser.feed(page.decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - a page we cannot parse is a page without a form
        return None
    if parser.action is None or parser.method != "get":
        return None
    action = urllib.parse.urlsplit(urllib.parse.urljoin(page_url, parser.action))
    if not cards.is_http_url(action.geturl()) or action.netloc != urllib.parse.urlsplit(page_url).netloc:
        return None
    query = dict(urllib.parse.parse_qsl(action.query))
    query.update(parser.fields)
    return urllib.parse.urlunsplit(action._replace(query=urllib.parse.urlencode(query), fragment=""))


def _open_file(url: str, headers: Mapping[str, str], label: str, timeout: float) -> Any:
    """Open ``url`` for the file's bytes; follows a Google Drive confirmation form once.

    Raises:
        urllib.error.HTTPError: the server answered an error status (416 included).
        DownloadError: the answer is a web page (sign-in, quota or an unknown confirmation page).
    """
    opener = _opener()
    response = opener.open(urllib.request.Request(url, headers=dict(headers)), timeout=timeout)
    if not response.headers.get("Content-Type", "").startswith("text/html"):
        return response
    with response:
        page = response.read(1 << 19)
        form_url = _download_form_url(page, response.geturl())
    if form_url is None:
        raise DownloadError(f"{url} returned a web page, not the file (a sign-in, quota or confirmation page); "
                            "download it in a browser instead")
    logger.info("%s: %s answered with a download confirmation form; following it", label, url)
    response = opener.open(urllib.request.Request(form_url, headers=dict(headers)), timeout=timeout)
    if response.headers.get("Content-Type", "").startswith("text/html"):
        response.close()
        raise DownloadError(f"{url} returned a web page, not the file, even after its download confirmation form "
                            "was followed; download it in a browser instead")
    return response


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_RESTART, _UNCONFIRMED = "restart", "unconfirmed"


def _sidecar(part: Path) -> Path:
    """``<file>.part.json``: the URL and validators the ``.part`` file was downloaded from."""
    return part.with_name(part.name + ".json")


def _discard_part(part: Path) -> None:
    for path in (part, _sidecar(part)):
        path.unlink(missing_ok=True)


def _validators(headers: Any) -> dict[str, str | None]:
    """Strong ETag (weak ones cannot be used with If-Range) and Last-Modified of a response."""
    etag = headers.get("ETag")
    return {"etag": etag if etag and not etag.startswith("W/") else None, "last_modified": headers.get("Last-Modified")}


def _validator_changed(meta: Mapping[str, Any], headers: Any) -> bool:
    new = _validators(headers)
    return any(meta.get(k) and new[k] and meta[k] != new[k] for k in ("etag", "last_modified"))


def _content_length(headers: Any, url: str) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise DownloadError(f"{url}: the server sent a malformed Content-Length {value!r}")
    return int(value)


def _fetch(url: str, part: Path, progress: ProgressFn, label: str, timeout: float) -> str:
    """Download ``url`` into ``part``, resuming it when its sidecar says it came from ``url``; return its sha256.

    A ``.part`` without a sidecar, or whose sidecar names another URL, is deleted first (bytes from one URL
    are never spliced onto another's). Returns only when the server confirmed that ``part`` is complete.

    Raises:
        DownloadError: the server's answer is inconsistent or incomplete (the message says what was wrong);
            the ``.part`` is kept for a later resume unless its bytes are known to be wrong.
        urllib.error.URLError, http.client.HTTPException, OSError: network or disk errors.
    """
    if part.exists():
        recorded = _read_json(_sidecar(part)).get("url")
        if recorded != url:
            logger.info("%s: %s came from %s, not %s; starting from zero", label, part, recorded or "an unknown URL",
                        url)
            _discard_part(part)
    else:
        _sidecar(part).unlink(missing_ok=True)
    outcome = ""
    for _attempt in range(4):
        outcome = _fetch_once(url, part, progress, label, timeout, probing=outcome == _UNCONFIRMED)
        if outcome not in (_RESTART, _UNCONFIRMED):
            return outcome
    raise DownloadError(f"{url}: the server never confirmed the end of the file (4 attempts); the partial file "
                        f"{part} is kept (run again to resume)")


def _fetch_once(url: str, part: Path, progress: ProgressFn, label: str, timeout: float,
                probing: bool) -> str:
    """One request: the sha256 of the complete ``part``, or ``_RESTART`` / ``_UNCONFIRMED`` (try again)."""
    meta = _read_json(_sidecar(part)) if part.exists() else {}
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "talkbench-weights/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    try:
        response = _open_file(url, headers, label, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        try:
            content_range = (err.headers.get("Content-Range") or "").strip()
            match = _UNSATISFIED_RANGE.fullmatch(content_range)
            changed = _validator_changed(meta, err.headers)
        finally:
            err.close()
        if match and int(match.group(1)) == have and meta.get("total") in (None, have) and not changed:
            logger.info("%s: the server confirms the partial file is complete (%d bytes)", label, have)
            return _hash_file(part)
        logger.info("%s: %s answered 416 with Content-Range %r to a %d-byte partial file; starting from zero",
                    label, url, content_range, have)
        _discard_part(part)
        return _RESTART
    with response:
        status = response.status
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DownloadError(f"{url}: the server sent the file with Content-Encoding {encoding!r} although "
                                "identity was asked for")
        length = _content_length(response.headers, url)
        if status == 206:
            content_range = (response.headers.get("Content-Range") or "").strip()
            match = _CONTENT_RANGE.fullmatch(content_range)
            if (not match or match.group(3) == "*" or int(match.group(1)) != have
                    or int(match.group(2)) != int(match.group(3)) - 1
                    or (length is not None and length != int(match.group(2)) - have + 1)):
                raise DownloadError(f"{url}: asked for bytes {have}- and got HTTP 206 with Content-Range "
                                    f"{content_range or 'missing'!r} and Content-Length {length}; a resume needs "
                                    f"`bytes {have}-<last byte>/<total>` with a known total")
            total: int | None = int(match.group(3))
            if have and (meta.get("total") not in (None, total) or _validator_changed(meta, response.headers)):
                logger.info("%s: %s changed since the partial download started; starting from zero", label, url)
                _discard_part(part)
                return _RESTART
            mode = "ab"
            hasher = hashlib.sha256()
            if have:
                logger.info("resuming %s at %d of %d bytes", label, have, total)
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(_CHUNK), b""):
                        hasher.update(chunk)
        elif status == 200:
            if have and probing:
                _discard_part(part)
                raise DownloadError(f"{url}: the server sent no Content-Length and does not answer Range requests, "
                                    f"so the {have} bytes it sent cannot be confirmed to be the whole file (deleted)")
            if have:
                logger.info("%s: %s does not resume (answered 200 to a Range request); restarting from zero",
                            label, url)
            have, total, mode, hasher = 0, length, "wb", hashlib.sha256()
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {status} {response.reason}")
        if have == 0:  # a fresh file: record where its bytes come from before writing any
            _write_json(_sidecar(part), {"url": url, "total": total, **_validators(response.headers)})
        done = have
        with open(part, mode) as out:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                progress(done, total, label)
        chunked = bool(getattr(response, "chunked", False))
    if total is not None:
        if done > total:
            _discard_part(part)
            raise DownloadError(f"{url}: sent {done} bytes but announced {total} (partial file deleted)")
        if done < total:
            raise DownloadError(f"{url}: connection closed after {done} of {total} bytes (the partial file is "
                                "kept: run again to resume)")
        return hasher.hexdigest()
    if chunked:  # http.client raises IncompleteRead when a chunked body stops before its last chunk
        return hasher.hexdigest()
    logger.info("%s: %s sent %d bytes without Content-Length; asking it to confirm the size", label, url, done)
    return _UNCONFIRMED


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of legacy files


def _first_pickle_is_torch_magic(head: bytes) -> bool:
    """Whether ``head`` starts with a pickle of exactly torch's legacy magic number (parsed, not unpickled)."""
    try:
        ops = []
        for opcode, arg, _pos in pickletools.genops(head):
            ops.append((opcode.name, arg))
            if opcode.name == "STOP":
                break
    except ValueError:
        return False
    args = [arg for name, arg in ops if name not in ("PROTO", "FRAME", "STOP")]
    return args == [_TORCH_LEGACY_MAGIC] and ops[-1][0] == "STOP"


def checkpoint_problem(path: str | Path) -> str | None:
    """None when ``path`` looks like a file ``torch.load`` reads, else what is wrong (one phrase).

    Accepted: torch's zip format (a zip archive with a ``data.pkl`` record whose pickle opcodes parse
    and whose CRC matches), the legacy format (a pickle of torch's magic number first) and the legacy
    tar format (a tar with a ``pickle`` member). Nothing is unpickled and torch is not imported; a truncated
    zip (no central directory) or an HTML page is caught, a truncated legacy file is not.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                records = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not records:
                    return "a zip archive without a data.pkl record, not a torch checkpoint"
                pickle_bytes = archive.read(records[0])  # checks the record's CRC
            for _ in pickletools.genops(pickle_bytes):
                pass
            return None
        if _first_pickle_is_torch_magic(head):
            return None
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                if "pickle" in tar.getnames():
                    return None
        if head.startswith(b"PK\x03\x04"):
            return "a zip archive without its central directory (truncated?), not a readable torch checkpoint"
        if head.lstrip()[:1] == b"<":
            return "an HTML/XML page, not a torch checkpoint"
        return (f"not a torch checkpoint (starts with {head[:12]!r}: neither a zip archive with data.pkl nor a "
                "legacy torch pickle)")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError) as err:
        return f"not a readable torch checkpoint ({err})"


def download(card: cards.Card | str, progress: ProgressFn | None = None, force: bool = False,
             timeout: float = 60.0) -> Path:
    """Download a card's file into the cache (resuming a partial file) and verify it.

    The file is cached only when the server confirmed its end, its sha256 matches the card's (or the local
    pin's, or the published prefix) and, when no full sha256 is known, it is a readable torch checkpoint
    (:func:`checkpoint_problem`) of the card's ``size_bytes`` if given.

    Args:
        card: the card or its name.
        progress: a callback ``(done, total, label)``; None reports to the display installed with
            :func:`set_download_progress`, else logs every ~10 % (:func:`logging_progress`).
        force: download again even when a verified file is cached.
        timeout: seconds to wait for the server on each request.
    Returns:
        The path of the verified file in the cache.
    Raises:
        cards.CardError: the card is malformed (e.g. its ``file_name`` would leave the cache folder).
        WeightsNotFoundError: the card was never released (no URL).
        ChecksumError: the downloaded bytes do not match the expected sha256 (the bad file is deleted).
        DownloadError: every URL failed (the message names each URL and what was wrong).
    """
    return _download(cards.load_card(card) if isinstance(card, str) else card, progress, force, timeout)


def _download(card: cards.Card, progress: ProgressFn | None = None, force: bool = False, timeout: float = 60.0) -> Path:
    dest = cache_path(card)
    if dest.is_file() and not force:
        check = verify_file(card, dest)
        if check.status in ("ok", "unverified"):
            return dest
        logger.warning("%s: cached file %s: %s; downloading it again", card.name, dest, check.message)
    urls = candidate_urls(card)
    if not urls:
        raise WeightsNotFoundError(_how_to_get(card, dest, reason="its authors never released it"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if force:
        _discard_part(part)
    expected, source = expected_sha256(card)
    report, close = _reporter(progress)
    errors: list[str] = []
    checksum_errors: list[str] = []
    try:
        for url in urls:
            if not cards.is_http_url(url):
                errors.append(f"{url}: refused: only http:// and https:// URLs are downloaded (check the card and "
                              "$TALKBENCH_WEIGHTS_MIRROR)")
                logger.info("%s: refused to fetch %s (not http/https)", card.name, url)
                continue
            try:
                digest = _fetch(url, part, report, card.name, timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as err:
                errors.append(f"{url}: {err}")
                logger.info("%s: %s failed (%s)", card.name, url, err)  # all listed in the error, or warned below
                continue
            size = part.stat().st_size
            if expected is not None:
                bad = digest != expected
            else:
                bad = bool(card.sha256_prefix) and not digest.startswith(card.sha256_prefix or "")
            if bad:
                # Wrong bytes from this URL: delete them (a resume must not build on them), try the next URL.
                _discard_part(part)
                said = f"the {source} says {expected}" if expected else f"the published prefix is {card.sha256_prefix}"
                checksum_errors.append(f"{url}: sha256 {digest}, but {said}")
                logger.info("%s: %s gave a file with the wrong sha256 (deleted)", card.name, url)
                continue
            if expected is None:  # nothing vouches for these bytes: at least check what they are
                problem = checkpoint_problem(part)
                if problem is None and card.size_bytes is not None and size != card.size_bytes:
                    problem = f"{size} bytes, but the card says {card.size_bytes}"
                if problem is not None:
                    _discard_part(part)
                    errors.append(f"{url}: the downloaded file is {problem} (deleted)")
                    logger.info("%s: %s gave an unusable file: %s (deleted)", card.name, url, problem)
                    continue
            os.replace(part, dest)
            _sidecar(part).unlink(missing_ok=True)
            if errors or checksum_errors:
                logger.warning("%s: downloaded from %s after other URLs failed:\n  %s", card.name, url,
                               "\n  ".join(errors + checksum_errors))
            st = dest.stat()
            _remember_hash(dest.resolve(), st.st_size, st.st_mtime_ns, digest)
            if expected is None:
                logger.warning("%s: no published sha256; downloaded file has sha256 %s (%d bytes). Record it with "
                               "`talkbench models verify --pin %s` to detect later changes.",
                               card.name, digest, size, card.name)
            return dest
    finally:
        close()
    if checksum_errors:
        raise ChecksumError(f"{card.name}: downloaded {card.file_name} has the wrong sha256 (deleted):\n  "
                            + "\n  ".join(checksum_errors) + "\nIf the source replaced its file on purpose, check "
                            f"it and pass it with --weights {card.name}=PATH.")
    raise DownloadError(_how_to_get(card, dest, reason=f"could not download {card.file_name}:\n  "
                                    + "\n  ".join(errors), downloading=True))


def _how_to_get(card: cards.Card, dest: Path, reason: str, downloading: bool = False) -> str:
    """The one text that says how to get a card's file by hand.

    Args:
        card: the card.
        dest: where the file belongs in the cache.
        reason: why there is no local file (may span lines, e.g. one line per failed URL).
        downloading: True when the failing operation IS the download (``models download`` or the automatic
            download of ``resolve``): then suggesting ``talkbench models download`` would repeat what just failed.
    """
    end = "" if "\n" in reason or reason.endswith((".", ")")) else "."
    lines = [f"No local file for weights card `{card.name}` ({card.title}): {reason}{end}"]
    if card.urls and downloading:
        lines.append(f"Download {card.file_name} by hand (e.g. in a browser) from {' or '.join(card.urls)} and put "
                     f"it at {dest}, or pass a local file to the command with `--weights {card.name}=PATH`.")
        return "\n".join(lines)
    if card.urls:
        lines.append(f"Get {card.file_name} from {' or '.join(card.urls)}")
        lines.append(f"  - run `talkbench models download {card.name}`, or")
        lines.append(f"  - download it yourself and put it at {dest}, or")
    else:
        lines.append("There is no public download for it.")
    lines.append(f"  - pass a local file with `--weights {card.name}=PATH`.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Resolve
# --------------------------------------------------------------------------------------------------

def resolve(name: str, overrides: Mapping[str, Path] | None = None, download: bool = True,
            progress: ProgressFn | None = None) -> Path:
    """A local checkpoint path for card ``name``.

    Order: the ``--weights NAME=PATH`` override (must exist; not hashed against the card, since users pass
    their own or converted files on purpose); else the file shipped inside the package (card field
    ``bundled``) when it is there; else the cached file when its sha256 matches the card (or
    the card's sha256 is unknown: used with a one-time warning); else a download (when ``download``),
    verified; else an error saying how to get the file.

    Args:
        name: the card name.
        overrides: ``--weights`` items as :func:`parse_overrides` returns them.
        download: allow a download when no verified file is at hand.
        progress: the download's progress callback; None uses the display installed with
            :func:`set_download_progress`, else logs every ~10 %.
    Raises:
        cards.CardError: no card called ``name``, or its card file is malformed (e.g. a ``file_name`` that would
            leave the cache folder, a URL that is not http(s)).
        FileNotFoundError: the override path does not exist.
        WeightsNotFoundError: nothing cached and downloading not allowed / not possible.
        ChecksumError: the cached file is corrupt and downloading is not allowed (or a download is corrupt).
        DownloadError: every URL failed.
    """
    card = cards.load_card(name)
    if overrides and name in overrides:
        path = Path(overrides[name]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"--weights {name}={path}: file not found. Give the path of the {card.file_name} checkpoint "
                f"({card.title}).")
        return path
    bundled = card.bundled_path()
    if bundled is not None:
        if bundled.is_file():
            return bundled
        logger.warning("%s: the bundled file %s is missing from this installation; trying the cache.", card.name,
                       bundled)
    dest = cache_path(card)
    if dest.is_file():
        check = verify_file(card, dest)
        if check.status == "ok":
            return dest
        if check.status == "unverified":
            if card.name not in _warned_unknown:
                _warned_unknown.add(card.name)
                logger.warning("%s: using %s without a sha256 check (%s); run `talkbench models verify --pin %s` "
                               "to pin its sha256 %s.", card.name, dest, check.message, card.name, check.sha256[:12])
            return dest
        if not download:
            raise ChecksumError(f"{card.name}: cached file {dest}: {check.message}. Delete it and run "
                                f"`talkbench models download {card.name}`, or pass --weights {card.name}=PATH.")
        logger.warning("%s: cached file %s: %s; downloading it again", card.name, dest, check.message)
    if download and card.released:
        return _download(card, progress)
    reason = "its authors never released it" if not card.released else "it is not in the cache and downloading is off"
    raise WeightsNotFoundError(_how_to_get(card, dest, reason=reason))


def resolve_with_sha(name: str, overrides: Mapping[str, Path] | None = None, download: bool = True,
                     progress: ProgressFn | None = None) -> tuple[Path, str]:
    """(:func:`resolve`'s path, the first 12 hex digits of its sha256): what an observer loads and records.

    The prefix is the provenance an observer stores as ``card=prefix`` with every run; the hash is remembered
    (:func:`file_sha256`), so a cached file is read once, not at every run. Arguments and errors are those
    of :func:`resolve`.
    """
    path = resolve(name, overrides, download=download, progress=progress)
    return path, sha256_prefix(path)


def _override_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a ``--weights`` file (one phrase), or None when it is a readable regular file."""
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a checkpoint file"
    if not path.is_file():
        return "is not a regular file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def parse_overrides(items: Iterable[str]) -> dict[str, Path]:
    """``["NAME=PATH", ...]`` -> {name: Path}, validated: the CLI's one check of ``--weights`` items.

    NAME must be a card (a misspelt name gets the close matches and the known names) and PATH an existing,
    readable regular file (``~`` is expanded). Each error message names the item and says how to fix it.

    Raises:
        ValueError: an item is not ``NAME=PATH``.
        cards.CardError: NAME is not a card, or its card file is malformed.
        WeightsNotFoundError: PATH does not exist, is a directory or another non-regular file, or is unreadable.
    """
    out: dict[str, Path] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise ValueError(f"--weights takes NAME=PATH (e.g. syncnet-v2=/data/syncnet_v2.model), got {item!r}.")
        try:
            card = cards.load_card(name)
        except cards.CardError as err:
            fix = "" if err.card_path else " Fix the name before `=` (`talkbench models list` shows every card)."
            raise cards.CardError(f"--weights {item}: {err}{fix}", err.card_path) from None
        path = Path(raw).expanduser()
        problem = _override_problem(path)
        if problem is not None:
            raise WeightsNotFoundError(
                f"--weights {item}: {path} {problem}. Give the path of a {card.file_name} checkpoint file "
                f"({card.title}), e.g. `--weights {name}=/path/to/{card.file_name}`.")
        out[name] = path
    return out


__all__ = ["ChecksumError", "DownloadError", "ProgressFactory", "ProgressFn", "Verification",
           "WeightsError",  # the base class, defined in talkbench.cards (CardError derives from it too)
           "WeightsNotFoundError", "cache_path", "candidate_urls", "checkpoint_problem", "direct_url", "download",
           "expected_sha256", "file_sha256", "home", "logging_progress", "parse_overrides", "pin", "pins",
           "resolve", "resolve_with_sha", "safe_cache_path", "set_download_progress", "sha256_prefix",
           "verify_file"]

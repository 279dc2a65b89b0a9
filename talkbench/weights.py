"""Checkpoint cards, the local cache, downloads with resume, and sha256 checks.

Each released checkpoint the protocol needs is declared once, as data, by a card: a TOML file in the
repository's ``observers/`` folder (shipped inside the wheel as ``talkbench/_cards``). A card says what
the file is (name, URLs, sha256, size, licence, source repository pinned to a commit), how the
network expects its input, what it measures, and what its authors report on ground truth.

Where files live:
    ``$TALKBENCH_HOME`` (default ``~/.cache/talkbench``)
    ├── weights/<card name>/<file name>        verified downloads (``.part`` while downloading)
    ├── pins.json       sha256 recorded by ``talkbench models verify --pin`` for cards whose sha256 is unknown
    └── hashes.json     sha256 of files already hashed, keyed by (path, size, mtime), so a 1 GB file is
                        hashed once, not on every run

Environment:
    ``TALKBENCH_HOME``            the cache root.
    ``TALKBENCH_CARDS``           extra card folders (``os.pathsep``-separated) read before the built-in ones;
                                  a card there replaces the built-in card of the same name.
    ``TALKBENCH_WEIGHTS_MIRROR``  base URL tried before a card's own URLs: ``<mirror>/<name>/<file_name>``.

The resolution order of :func:`resolve` is: ``--weights NAME=PATH`` override, else the cached file when
its sha256 matches, else a download (verified), else an error that says how to get the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # 1 MiB: read/write/hash granularity
_ROLES = ("observer", "generator", "expert", "discriminator", "detector")


class WeightsError(Exception):
    """Base class of the errors of this module."""


class CardError(WeightsError, ValueError):
    """A card is missing or malformed; the message names the card file."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No usable local file for a card (and downloading was not allowed or not possible)."""


class ChecksumError(WeightsError):
    """A file's sha256 differs from the one its card (or pin) expects."""


class DownloadError(WeightsError):
    """Every URL of a card failed; the message lists why, URL by URL."""


@dataclass(frozen=True)
class Card:
    """One released checkpoint, as declared by ``observers/<name>.toml``.

    Attributes:
        name: card name, e.g. ``"syncnet-v2"`` (also the TOML file's stem).
        title: one-line description.
        role: observer | generator | expert | discriminator | detector.
        file_name: file name in the cache (the official name where the source gives one).
        urls: download URLs exactly as the sources give them (may be empty: not released).
        sha256: full lowercase hex digest, or None when no source publishes it.
        sha256_prefix: a published prefix of the sha256 (e.g. in a torch.hub file name), or None.
        size_bytes: file size in bytes, or None when unknown.
        released: False for variants the authors never published (``urls`` is then empty).
        license: licence of the weights, in words.
        source: repository, commit, files read, paper (free-form table).
        layout: how the file nests the state dict.
        params: number of tensor elements in the state dict (from the reference code), or None.
        input: the input spec (fps, crop, size, colour, normalisation, ...), free-form table.
        measures: what the checkpoint measures (empty for non-observers).
        metrics: summary columns it produces in talkbench (e.g. ``("lse_c", "lse_d")``).
        higher_is_better: metric -> True when a higher value is better.
        reported: what the authors report on ground truth (free-form table, ``status`` says if known).
        notes: anything a user must know (caveats, alternative links, history).
        card_path: the TOML file this card was read from.
        bundled: path of a weights file shipped inside the ``talkbench`` package, relative to the package
            folder (e.g. ``data/mini/lipreader-b.pt``), or None. :func:`resolve` uses it when no override is given.
        protocol: the protocol whose observers use this card (``talklip2023`` unless the card says otherwise,
            e.g. ``mini`` for the observers talkbench trains itself).
    """

    name: str
    title: str
    role: str
    file_name: str
    urls: tuple[str, ...]
    sha256: str | None
    sha256_prefix: str | None
    size_bytes: int | None
    released: bool
    license: str
    source: Mapping[str, Any]
    layout: str
    params: int | None
    input: Mapping[str, Any]
    measures: str
    metrics: tuple[str, ...]
    higher_is_better: Mapping[str, bool]
    reported: Mapping[str, Any]
    notes: str = ""
    card_path: Path | None = field(default=None, compare=False)
    bundled: str | None = None
    protocol: str = "talklip2023"

    def bundled_path(self) -> Path | None:
        """Absolute path of the file shipped inside the package (whether or not it exists), or None."""
        if not self.bundled:
            return None
        return Path(__file__).resolve().parent / self.bundled

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings, tuples as lists)."""
        out = dataclasses.asdict(self)
        out["card_path"] = str(self.card_path) if self.card_path else None
        out["urls"] = list(self.urls)
        out["metrics"] = list(self.metrics)
        return out


# --------------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------------

def card_dirs() -> list[Path]:
    """Folders searched for cards, first wins: ``$TALKBENCH_CARDS``, then the shipped cards.

    The shipped cards are ``talkbench/_cards`` inside an installed wheel, else the repository's
    ``observers/`` folder next to the package (source checkout, editable install).
    """
    dirs = [Path(p).expanduser() for p in os.environ.get("TALKBENCH_CARDS", "").split(os.pathsep) if p]
    packaged = resources.files("talkbench") / "_cards"
    if packaged.is_dir():
        dirs.append(Path(str(packaged)))
    else:
        dirs.append(Path(__file__).resolve().parent.parent / "observers")
    return dirs


def _card_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in card_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def _opt_str(value: Any, what: str, path: Path) -> str | None:
    if value is None or value == UNKNOWN or value == "":
        return None
    if not isinstance(value, str):
        raise CardError(f"{path}: `{what}` must be a string or \"unknown\", got {value!r}.")
    return value


def parse_card(path: Path) -> Card:
    """Read and validate one card file.

    Raises:
        CardError: the TOML is invalid or a field is missing / of the wrong form (the message names the file).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise CardError(f"{path}: cannot read card ({err}).") from err
    required = ("name", "title", "role", "file_name", "urls", "sha256", "license", "source", "layout", "input")
    missing = [k for k in required if k not in data]
    if missing:
        raise CardError(f"{path}: card lacks field(s) {', '.join(missing)}.")
    name = data["name"]
    if name != path.stem:
        raise CardError(f"{path}: card name {name!r} must equal the file name stem {path.stem!r}.")
    if data["role"] not in _ROLES:
        raise CardError(f"{path}: `role` must be one of {', '.join(_ROLES)}, got {data['role']!r}.")
    sha = _opt_str(data["sha256"], "sha256", path)
    if sha is not None:
        sha = sha.lower()
        if not _HEX64.match(sha):
            raise CardError(f"{path}: `sha256` must be 64 hex digits or \"unknown\", got {data['sha256']!r}.")
    prefix = _opt_str(data.get("sha256_prefix"), "sha256_prefix", path)
    if prefix is not None and not re.fullmatch(r"[0-9a-f]{4,63}", prefix.lower()):
        raise CardError(f"{path}: `sha256_prefix` must be hex digits, got {prefix!r}.")
    size = data.get("size_bytes", UNKNOWN)
    if size == UNKNOWN:
        size = None
    elif not isinstance(size, int) or size <= 0:
        raise CardError(f"{path}: `size_bytes` must be a positive integer or \"unknown\", got {size!r}.")
    urls = data["urls"]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise CardError(f"{path}: `urls` must be a list of strings.")
    released = bool(data.get("released", True))
    if released and not urls:
        raise CardError(f"{path}: a released card needs at least one URL (or set released = false).")
    params = data.get("params", UNKNOWN)
    params = None if params == UNKNOWN else int(params)
    measures_tbl = data.get("measures", {})
    hib = measures_tbl.get("higher_is_better", {})
    if not isinstance(hib, dict) or not all(isinstance(v, bool) for v in hib.values()):
        raise CardError(f"{path}: `measures.higher_is_better` must map metric names to true/false.")
    metrics = tuple(measures_tbl.get("metrics", ()))
    if set(hib) != set(metrics):
        raise CardError(f"{path}: `measures.higher_is_better` must name exactly the metrics {list(metrics)}.")
    return Card(
        name=name, title=data["title"], role=data["role"], file_name=data["file_name"], urls=tuple(urls),
        sha256=sha, sha256_prefix=prefix.lower() if prefix else None, size_bytes=size, released=released,
        license=data["license"], source=data["source"], layout=data["layout"], params=params,
        input=data["input"], measures=measures_tbl.get("description", ""), metrics=metrics,
        higher_is_better=hib, reported=data.get("reported_ground_truth", {"status": UNKNOWN}),
        notes=data.get("notes", ""), card_path=path, bundled=_bundled(data.get("bundled"), path),
        protocol=str(data.get("protocol", "talklip2023")),
    )


def _bundled(value: Any, path: Path) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
        raise CardError(f"{path}: `bundled` must be a relative path inside the talkbench package, got {value!r}.")
    return value


def list_cards() -> list[Card]:
    """Every card, sorted by name."""
    return [parse_card(p) for _, p in sorted(_card_files().items())]


def load_card(name: str) -> Card:
    """The card called ``name``.

    Raises:
        CardError: no such card (the message lists the known names and the closest match).
    """
    files = _card_files()
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise CardError(f"No weights card named `{name}`.{hint} Known cards: {', '.join(sorted(files))}.")
    return parse_card(files[name])


# --------------------------------------------------------------------------------------------------
# Cache, pins, hashes
# --------------------------------------------------------------------------------------------------

def home() -> Path:
    """The cache root: ``$TALKBENCH_HOME`` or ``~/.cache/talkbench``."""
    return Path(os.environ.get("TALKBENCH_HOME") or Path.home() / ".cache" / "talkbench").expanduser()


def cache_path(card: Card | str) -> Path:
    """Where the verified file of ``card`` lives (whether or not it is there)."""
    card = load_card(card) if isinstance(card, str) else card
    return home() / "weights" / card.name / card.file_name


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


def file_sha256(path: str | Path) -> str:
    """Full sha256 of a file, remembered by (resolved path, size, mtime) in memory and in ``hashes.json``."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _memo:
            return _memo[key]
    store_path = home() / "hashes.json"
    stored = _read_json(store_path).get(str(path))
    if stored and stored.get("size") == st.st_size and stored.get("mtime_ns") == st.st_mtime_ns:
        digest = stored["sha256"]
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
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


def pin(card: Card | str, digest: str, size: int) -> None:
    """Record ``digest`` as the expected sha256 of ``card`` on this machine."""
    card = load_card(card) if isinstance(card, str) else card
    data = pins()
    data[card.name] = {"sha256": digest, "size_bytes": size, "file_name": card.file_name,
                       "pinned": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(home() / "pins.json", data)


def expected_sha256(card: Card) -> tuple[str | None, str]:
    """(expected digest or None, where it comes from: ``card`` | ``pin`` | ``unknown``)."""
    if card.sha256:
        return card.sha256, "card"
    pinned = pins().get(card.name)
    if pinned and _HEX64.match(str(pinned.get("sha256", ""))):
        return pinned["sha256"], "pin"
    return None, UNKNOWN


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


def verify_file(card: Card, path: Path) -> Verification:
    """Hash ``path`` and compare it with the card's sha256 (or the local pin, or the published prefix)."""
    if not path.is_file():
        return Verification("missing", "", None, UNKNOWN, f"{path} does not exist")
    digest = file_sha256(path)
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
    return Verification("unverified", digest, None, UNKNOWN, f"no published sha256{extra}")


# --------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------

_GDRIVE = re.compile(r"^https?://drive\.google\.com/(?:file/d/|open\?id=|uc\?(?:export=download&)?id=)([\w-]+)")

#: Progress callback: (bytes done, total bytes or None, description).
ProgressFn = Callable[[int, "int | None", str], None]


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


def candidate_urls(card: Card) -> list[str]:
    """Mirror URL (if ``$TALKBENCH_WEIGHTS_MIRROR`` is set) then the card's URLs, made direct."""
    urls = []
    mirror = os.environ.get("TALKBENCH_WEIGHTS_MIRROR", "").rstrip("/")
    if mirror:
        urls.append(f"{mirror}/{urllib.parse.quote(card.name)}/{urllib.parse.quote(card.file_name)}")
    urls.extend(direct_url(u) for u in card.urls)
    return urls


def _rich_progress() -> tuple[ProgressFn, Callable[[], None]]:
    """A rich download bar on stderr; returns (update, close)."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False)
    bar.start()
    tasks: dict[str, Any] = {}

    def update(done: int, total: int | None, description: str) -> None:
        if description not in tasks:
            tasks[description] = bar.add_task(description, total=total)
        bar.update(tasks[description], completed=done, total=total)

    return update, bar.stop


def _fetch(url: str, part: Path, hasher: Any, progress: ProgressFn | None, label: str,
           timeout: float) -> Any:
    """Append the missing bytes of ``url`` to ``part`` (HTTP Range resume), feeding ``hasher``.

    ``hasher`` already holds the bytes ``part`` had. If the server ignores the Range header (answers
    200 instead of 206), the partial file is restarted from zero with a fresh hasher.
    Returns the hasher that covers the whole of ``part``.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "talkbench-weights/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the partial file is complete
            return hasher
        raise
    with response:
        ctype = response.headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            raise DownloadError(f"{url} returned a web page, not the file (a sign-in, quota or confirmation "
                                "page); download it in a browser instead")
        length = response.headers.get("Content-Length")
        status = response.status
        if have and status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
            if not match or int(match.group(1)) != have:
                raise DownloadError(f"{url}: server answered Range bytes={have}- with {content_range!r}")
            total = int(match.group(2)) if match.group(2) != "*" else None
            mode = "ab"
            logger.info("resuming %s at %d bytes", label, have)
        else:
            if have:
                logger.info("%s: server does not resume; restarting from zero", url)
            have = 0
            hasher = hashlib.sha256()
            total = int(length) if length else None
            mode = "wb"
        done = have
        with open(part, mode) as out:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total, label)
        if total is not None and done != total:
            raise DownloadError(f"{url}: connection closed after {done} of {total} bytes (run again to resume)")
    return hasher


def download(card: Card | str, progress: bool | ProgressFn = True, force: bool = False,
             timeout: float = 60.0) -> Path:
    """Download a card's file into the cache (resuming a partial file) and verify its sha256.

    Args:
        card: the card or its name.
        progress: True for a rich bar on stderr, False for none, or a callback ``(done, total, label)``.
        force: download again even when a verified file is cached.
        timeout: seconds to wait for the server on each request.
    Returns:
        The path of the verified file in the cache.
    Raises:
        WeightsNotFoundError: the card was never released (no URL).
        ChecksumError: the downloaded bytes do not match the expected sha256 (the bad file is deleted).
        DownloadError: every URL failed.
    """
    return _download(load_card(card) if isinstance(card, str) else card, progress, force, timeout)


def _download(card: Card, progress: bool | ProgressFn = True, force: bool = False, timeout: float = 60.0) -> Path:
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
    if force and part.exists():
        part.unlink()
    expected, source = expected_sha256(card)
    if callable(progress):
        report, close = progress, (lambda: None)
    elif progress:
        report, close = _rich_progress()
    else:
        report, close = None, (lambda: None)
    errors: list[str] = []
    checksum_errors: list[str] = []
    try:
        for url in urls:
            hasher = hashlib.sha256()
            if part.exists():  # resume: the hash must cover the bytes already there
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(_CHUNK), b""):
                        hasher.update(chunk)
            try:
                hasher = _fetch(url, part, hasher, report, card.name, timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as err:
                errors.append(f"{url}: {err}")
                logger.warning("%s: %s failed (%s)", card.name, url, err)
                continue
            digest = hasher.hexdigest()
            size = part.stat().st_size
            if expected is not None:
                bad = digest != expected
            else:
                bad = bool(card.sha256_prefix) and not digest.startswith(card.sha256_prefix or "")
            if bad:
                # Wrong bytes from this URL: delete them (a resume must not build on them), try the next URL.
                part.unlink()
                said = f"the {source} says {expected}" if expected else f"the published prefix is {card.sha256_prefix}"
                checksum_errors.append(f"{url}: sha256 {digest}, but {said}")
                logger.warning("%s: %s gave a file with the wrong sha256 (deleted)", card.name, url)
                continue
            os.replace(part, dest)
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
    raise DownloadError(f"{card.name}: could not download {card.file_name}:\n  " + "\n  ".join(errors) + "\n"
                        + _how_to_get(card, dest, reason="the download failed"))


def _how_to_get(card: Card, dest: Path, reason: str) -> str:
    lines = [f"No local file for weights card `{card.name}` ({card.title}): {reason}."]
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

def resolve(name: str, overrides: Mapping[str, Path] | None = None, download: bool = True) -> Path:
    """A local checkpoint path for card ``name``.

    Order: the ``--weights NAME=PATH`` override (must exist; not hashed against the card, since users pass
    their own or converted files on purpose); else the file shipped inside the package (card field
    ``bundled``) when it is there; else the cached file when its sha256 matches the card (or
    the card's sha256 is unknown: used with a one-time warning); else a download (when ``download``),
    verified; else an error saying how to get the file.

    Raises:
        CardError: no card called ``name``.
        FileNotFoundError: the override path does not exist.
        WeightsNotFoundError: nothing cached and downloading not allowed / not possible.
        ChecksumError: the cached file is corrupt and downloading is not allowed (or a download is corrupt).
        DownloadError: every URL failed.
    """
    card = load_card(name)
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
        return _download(card)
    reason = "its authors never released it" if not card.released else "it is not in the cache and downloading is off"
    raise WeightsNotFoundError(_how_to_get(card, dest, reason=reason))


def parse_overrides(items: Iterable[str]) -> dict[str, Path]:
    """``["NAME=PATH", ...]`` -> {name: Path}; checks the names against the cards.

    Raises:
        ValueError: an item is not NAME=PATH, or NAME is not a card.
    """
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--weights takes NAME=PATH (e.g. syncnet-v2=/data/syncnet_v2.model), got {item!r}.")
        load_card(name.strip())
        out[name.strip()] = Path(path.strip()).expanduser()
    return out


__all__ = ["Card", "CardError", "ChecksumError", "DownloadError", "Verification", "WeightsError",
           "WeightsNotFoundError", "cache_path", "candidate_urls", "card_dirs", "direct_url", "download",
           "expected_sha256", "file_sha256", "home", "list_cards", "load_card", "parse_card", "parse_overrides",
           "pin", "pins", "resolve", "sha256_prefix", "verify_file"]

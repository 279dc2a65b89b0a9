"""Checkpoint cards, the local cache, downloads with resume, and sha256 checks.

Each released checkpoint the protocol needs is declared once, as data, by a card: a TOML file in the
repository's ``observers/`` folder (shipped inside the wheel as ``talkbench/_cards``). A card says what
the file is (name, URLs, sha256, size, licence, source repository pinned to a commit), how the
network expects its input, what it measures, and what its authors report on ground truth.

Where files live:
    ``$TALKBENCH_HOME`` (default ``~/.cache/talkbench``)
    ├── weights/<card name>/<file name>        verified downloads (``.part`` + ``.part.json`` while downloading)
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

import dataclasses
import difflib
import hashlib
import html.parser
import http.client
import json
import logging
import os
import pickletools
import re
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_URL_SCHEMES = ("http", "https")
_CHUNK = 1 << 20  # 1 MiB: read/write/hash granularity
_ROLES = ("observer", "generator", "expert", "discriminator", "detector")


class WeightsError(Exception):
    """Base class of the errors of this module."""


class CardError(WeightsError, ValueError):
    """A card is missing or malformed; the message names the card file.

    Attributes:
        card_path: the malformed card file, or None (e.g. for an unknown card name).
    """

    def __init__(self, message: str, card_path: Path | None = None) -> None:
        super().__init__(message)
        self.card_path = card_path


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
        raise CardError(f"{path}: `{what}` must be a string or \"unknown\", got {value!r}.", path)
    return value


def _typed(data: Mapping[str, Any], key: str, kind: type, what: str, path: Path,
           default: Any = None) -> Any:
    """``data[key]`` (or ``default`` when absent), which must be of ``kind``; else CardError naming the file."""
    value = data.get(key, default)
    if not isinstance(value, kind):
        raise CardError(f"{path}: `{key}` must be {what}, got {value!r}. Fix the card file.", path)
    return value


def _check_file_name(value: Any, where: str) -> str:
    """The card's ``file_name`` when it is a plain file name; else CardError (``where`` names the card file)."""
    if not isinstance(value, str) or not value.strip():
        raise CardError(f"{where}: `file_name` must be a non-empty file name, got {value!r}.")
    bad = None
    if "/" in value or "\\" in value:
        bad = "contains a path separator"
    elif ".." in value:
        bad = "contains `..`"
    elif Path(value).is_absolute() or PureWindowsPath(value).anchor:
        bad = "is an absolute path"
    elif "\0" in value or value in (".", ".."):
        bad = "is not a file name"
    if bad:
        raise CardError(f"{where}: `file_name` {value!r} {bad}; it must be a plain file name such as "
                        "\"model.pth\" (the file is stored in the card's cache folder).")
    return value


def _check_url(url: str, where: str) -> str:
    """``url`` when it is an http(s) URL with a host; else CardError (``where`` names the card file)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in _URL_SCHEMES or not parts.netloc:
        raise CardError(f"{where}: URL {url!r} is refused: card URLs must be http:// or https:// URLs with a host.")
    return url


def parse_card(path: Path) -> Card:
    """Read and validate one card file.

    Raises:
        CardError: the TOML is invalid or a field is missing / of the wrong form (the message names the file).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise CardError(f"{path}: cannot read card ({err}).", path) from err
    required = ("name", "title", "role", "file_name", "urls", "sha256", "license", "source", "layout", "input")
    missing = [k for k in required if k not in data]
    if missing:
        raise CardError(f"{path}: card lacks field(s) {', '.join(missing)}.", path)
    name = data["name"]
    if name != path.stem:
        raise CardError(f"{path}: card name {name!r} must equal the file name stem {path.stem!r}.", path)
    if not _CARD_NAME.match(name):
        raise CardError(f"{path}: card name {name!r} must be letters, digits and . _ + - (not starting with a dot).",
                        path)
    if data["role"] not in _ROLES:
        raise CardError(f"{path}: `role` must be one of {', '.join(_ROLES)}, got {data['role']!r}.", path)
    for key in ("title", "license", "layout"):
        _typed(data, key, str, "a string", path)
    for key in ("source", "input"):
        _typed(data, key, dict, "a table", path)
    try:
        file_name = _check_file_name(data["file_name"], str(path))
        safe_cache_path(name, file_name)
    except CardError as err:
        raise CardError(str(err), path) from None
    sha = _opt_str(data["sha256"], "sha256", path)
    if sha is not None:
        sha = sha.lower()
        if not _HEX64.match(sha):
            raise CardError(f"{path}: `sha256` must be 64 hex digits or \"unknown\", got {data['sha256']!r}.", path)
    prefix = _opt_str(data.get("sha256_prefix"), "sha256_prefix", path)
    if prefix is not None and not re.fullmatch(r"[0-9a-f]{4,63}", prefix.lower()):
        raise CardError(f"{path}: `sha256_prefix` must be hex digits, got {prefix!r}.", path)
    size = data.get("size_bytes", UNKNOWN)
    if size == UNKNOWN:
        size = None
    elif not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise CardError(f"{path}: `size_bytes` must be a positive integer or \"unknown\", got {size!r}.", path)
    urls = data["urls"]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise CardError(f"{path}: `urls` must be a list of strings.", path)
    for url in urls:
        try:
            _check_url(url, str(path))
        except CardError as err:
            raise CardError(str(err), path) from None
    released = _typed(data, "released", bool, "true or false", path, default=True)
    if released and not urls:
        raise CardError(f"{path}: a released card needs at least one URL (or set released = false).", path)
    params = data.get("params", UNKNOWN)
    if params == UNKNOWN:
        params = None
    elif not isinstance(params, int) or isinstance(params, bool) or params < 0:
        raise CardError(f"{path}: `params` must be a non-negative integer or \"unknown\", got {params!r}.", path)
    measures_tbl = _typed(data, "measures", dict, "a table ([measures] with description, metrics, "
                          "higher_is_better)", path, default={})
    description = _typed(measures_tbl, "description", str, "a string (measures.description)", path, default="")
    metrics_list = _typed(measures_tbl, "metrics", list, "a list of metric names (measures.metrics)", path,
                          default=[])
    if not all(isinstance(m, str) for m in metrics_list):
        raise CardError(f"{path}: `measures.metrics` must be a list of strings, got {metrics_list!r}.", path)
    hib = measures_tbl.get("higher_is_better", {})
    if not isinstance(hib, dict) or not all(isinstance(v, bool) for v in hib.values()):
        raise CardError(f"{path}: `measures.higher_is_better` must map metric names to true/false.", path)
    metrics = tuple(metrics_list)
    if set(hib) != set(metrics):
        raise CardError(f"{path}: `measures.higher_is_better` must name exactly the metrics {list(metrics)}.", path)
    reported = _typed(data, "reported_ground_truth", dict, "a table", path, default={"status": UNKNOWN})
    notes = _typed(data, "notes", str, "a string", path, default="")
    protocol = _typed(data, "protocol", str, "a string", path, default="talklip2023")
    return Card(
        name=name, title=data["title"], role=data["role"], file_name=file_name, urls=tuple(urls),
        sha256=sha, sha256_prefix=prefix.lower() if prefix else None, size_bytes=size, released=released,
        license=data["license"], source=data["source"], layout=data["layout"], params=params,
        input=data["input"], measures=description, metrics=metrics,
        higher_is_better=hib, reported=reported,
        notes=notes, card_path=path, bundled=_bundled(data.get("bundled"), path),
        protocol=protocol,
    )


def _bundled(value: Any, path: Path) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
        raise CardError(f"{path}: `bundled` must be a relative path inside the talkbench package, got {value!r}.",
                        path)
    return value


def list_cards() -> list[Card]:
    """Every card, sorted by name.

    Raises:
        CardError: a card file is malformed (use :func:`scan_cards` to list the others anyway).
    """
    return [parse_card(p) for _, p in sorted(_card_files().items())]


def scan_cards() -> tuple[list[Card], dict[str, CardError]]:
    """Every card that parses, sorted by name, and the malformed ones: (cards, {card name: error}).

    One broken card file (e.g. in a ``$TALKBENCH_CARDS`` folder) must not hide all the others from
    ``talkbench models list``.
    """
    cards: list[Card] = []
    broken: dict[str, CardError] = {}
    for name, path in sorted(_card_files().items()):
        try:
            cards.append(parse_card(path))
        except CardError as err:
            broken[name] = err
    return cards, broken


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` Did you mean `a`?`` (or `` `a` or `b`?``) for close card names, '' when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


def load_card(name: str) -> Card:
    """The card called ``name``.

    Raises:
        CardError: no such card (the message lists the closest matches and the known names), or the card
            file is malformed (the message names the file).
    """
    files = _card_files()
    if name not in files:
        raise CardError(f"No weights card named `{name}`.{_did_you_mean(name, files)} "
                        f"Known cards: {', '.join(sorted(files))}.")
    return parse_card(files[name])


# --------------------------------------------------------------------------------------------------
# Cache, pins, hashes
# --------------------------------------------------------------------------------------------------

def home() -> Path:
    """The cache root: ``$TALKBENCH_HOME`` or ``~/.cache/talkbench``."""
    return Path(os.environ.get("TALKBENCH_HOME") or Path.home() / ".cache" / "talkbench").expanduser()


def safe_cache_path(name: str, file_name: str) -> Path:
    """``$TALKBENCH_HOME/weights/<name>/<file_name>``, refusing anything that would land outside that folder.

    Raises:
        CardError: ``name`` or ``file_name`` is not a plain name, or the path lies (through ``..`` or an
            absolute path) outside the card's cache folder.
    """
    where = f"weights card `{name}`"
    if not isinstance(name, str) or not _CARD_NAME.match(name):
        raise CardError(f"{where}: the card name must be letters, digits and . _ + - (not starting with a dot).")
    _check_file_name(file_name, where)
    folder = home() / "weights" / name
    path = folder / file_name
    # Lexical check (a symlink the user put at the cache path on purpose is fine: downloads replace the link).
    if Path(os.path.normpath(path)).parent != Path(os.path.normpath(folder)):
        raise CardError(f"{where}: its file {path} lies outside the card's cache folder {folder}; "
                        "fix `file_name` in the card.")
    return path


def cache_path(card: Card | str) -> Path:
    """Where the verified file of ``card`` lives (whether or not it is there).

    Raises:
        CardError: the card's ``file_name`` would put the file outside ``$TALKBENCH_HOME/weights/<name>/``
            (checked here again although :func:`parse_card` rejects it, for cards built in code).
    """
    card = load_card(card) if isinstance(card, str) else card
    try:
        return safe_cache_path(card.name, card.file_name)
    except CardError as err:
        where = card.card_path or f"weights card `{card.name}`"
        raise CardError(f"{where}: {err}", card.card_path) from None


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
                and _HEX64.match(str(stored.get("sha256", "")))):
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


def verify_file(card: Card, path: Path, trust_memo: bool = True) -> Verification:
    """Hash ``path`` and compare it with the card's sha256 (or the local pin, or the published prefix).

    Args:
        card: the card whose file ``path`` should be.
        path: the file to check.
        trust_memo: passed to :func:`file_sha256`; False re-reads the whole file (``models verify``).
    """
    if not path.is_file():
        return Verification("missing", "", None, UNKNOWN, f"{path} does not exist")
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


class _HttpOnlyRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only: a redirect to ``file:``, ``ftp:``, ``data:`` ... is refused."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _URL_SCHEMES:
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


def _is_http_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in _URL_SCHEMES and bool(parts.netloc)


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
    if action.scheme.lower() not in _URL_SCHEMES or action.netloc != urllib.parse.urlsplit(page_url).netloc:
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


def _fetch(url: str, part: Path, progress: ProgressFn | None, label: str, timeout: float) -> str:
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


def _fetch_once(url: str, part: Path, progress: ProgressFn | None, label: str, timeout: float,
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
                if progress:
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


def download(card: Card | str, progress: bool | ProgressFn = True, force: bool = False,
             timeout: float = 60.0) -> Path:
    """Download a card's file into the cache (resuming a partial file) and verify it.

    The file is cached only when the server confirmed its end, its sha256 matches the card's (or the local
    pin's, or the published prefix) and, when no full sha256 is known, it is a readable torch checkpoint
    (:func:`checkpoint_problem`) of the card's ``size_bytes`` if given.

    Args:
        card: the card or its name.
        progress: True for a rich bar on stderr, False for none, or a callback ``(done, total, label)``.
        force: download again even when a verified file is cached.
        timeout: seconds to wait for the server on each request.
    Returns:
        The path of the verified file in the cache.
    Raises:
        CardError: the card is malformed (e.g. its ``file_name`` would leave the cache folder).
        WeightsNotFoundError: the card was never released (no URL).
        ChecksumError: the downloaded bytes do not match the expected sha256 (the bad file is deleted).
        DownloadError: every URL failed (the message names each URL and what was wrong).
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
    if force:
        _discard_part(part)
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
            if not _is_http_url(url):
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


def _how_to_get(card: Card, dest: Path, reason: str, downloading: bool = False) -> str:
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

def resolve(name: str, overrides: Mapping[str, Path] | None = None, download: bool = True) -> Path:
    """A local checkpoint path for card ``name``.

    Order: the ``--weights NAME=PATH`` override (must exist; not hashed against the card, since users pass
    their own or converted files on purpose); else the file shipped inside the package (card field
    ``bundled``) when it is there; else the cached file when its sha256 matches the card (or
    the card's sha256 is unknown: used with a one-time warning); else a download (when ``download``),
    verified; else an error saying how to get the file.

    Raises:
        CardError: no card called ``name``, or its card file is malformed (e.g. a ``file_name`` that would
            leave the cache folder, a URL that is not http(s)).
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
        CardError: NAME is not a card, or its card file is malformed.
        WeightsNotFoundError: PATH does not exist, is a directory or another non-regular file, or is unreadable.
    """
    out: dict[str, Path] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise ValueError(f"--weights takes NAME=PATH (e.g. syncnet-v2=/data/syncnet_v2.model), got {item!r}.")
        files = _card_files()
        if name not in files:
            raise CardError(f"--weights {item}: no weights card named `{name}`.{_did_you_mean(name, files)} "
                            f"Known cards: {', '.join(sorted(files))}. Fix the name before `=` "
                            "(`talkbench models list` shows every card).")
        card = parse_card(files[name])
        path = Path(raw).expanduser()
        problem = _override_problem(path)
        if problem is not None:
            raise WeightsNotFoundError(
                f"--weights {item}: {path} {problem}. Give the path of a {card.file_name} checkpoint file "
                f"({card.title}), e.g. `--weights {name}=/path/to/{card.file_name}`.")
        out[name] = path
    return out


__all__ = ["Card", "CardError", "ChecksumError", "DownloadError", "Verification", "WeightsError",
           "WeightsNotFoundError", "cache_path", "candidate_urls", "card_dirs", "checkpoint_problem", "direct_url",
           "download", "expected_sha256", "file_sha256", "home", "list_cards", "load_card", "parse_card",
           "parse_overrides", "pin", "pins", "resolve", "safe_cache_path", "scan_cards", "sha256_prefix",
           "verify_file"]

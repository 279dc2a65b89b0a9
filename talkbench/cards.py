"""Checkpoint cards: one TOML file per released checkpoint, read and validated.

Each checkpoint talkbench uses (observers, generators, experts, detectors, the discriminator) is declared once,
as data, by a card: a TOML file in the repository's ``cards/`` folder (shipped inside the wheel as
``talkbench/_cards``). A card says what the file is (name, URLs, sha256, size, licence, source repository pinned
to a commit), how the network expects its input, what it measures, and what its authors report on ground truth.

This module only reads cards. Where their files live, how they are downloaded and checked is
:mod:`talkbench.weights`.

Environment:
    ``TALKBENCH_CARDS``  extra card folders (``os.pathsep``-separated) read before the built-in ones;
                         a card there replaces the built-in card of the same name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: What a card says for a field its sources do not give (sha256, size, params, ...).
UNKNOWN = "unknown"
#: The roles a card may declare.
ROLES = ("observer", "generator", "expert", "discriminator", "detector")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_URL_SCHEMES = ("http", "https")
_REQUIRED = ("name", "title", "role", "file_name", "urls", "sha256", "license", "source", "layout", "input")


class WeightsError(Exception):
    """Base class of the checkpoint errors: malformed cards here, cache and download errors in
    :mod:`talkbench.weights` (which raises its subclasses), so ``except WeightsError`` catches them all."""


class CardError(WeightsError, ValueError):
    """A card is missing or malformed; the message names the card file.

    Attributes:
        card_path: the malformed card file, or None (e.g. for an unknown card name).
    """

    def __init__(self, message: str, card_path: Path | None = None) -> None:
        super().__init__(message)
        self.card_path = card_path


@dataclass(frozen=True)
class Card:
    """One released checkpoint, as declared by ``cards/<name>.toml``.

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
            folder (e.g. ``data/mini/lipreader-b.pt``), or None. :func:`talkbench.weights.resolve` uses it when
            no override is given.
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
# Field checks (also used by talkbench.weights on cards built in code)
# --------------------------------------------------------------------------------------------------

def is_sha256(value: object) -> bool:
    """Whether ``value`` is a full sha256 as cards, pins and the hash memo store it: 64 lowercase hex digits."""
    return isinstance(value, str) and bool(_HEX64.match(value))


def is_http_url(url: str) -> bool:
    """Whether ``url`` is an http:// or https:// URL with a host (the only URLs talkbench fetches)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in _URL_SCHEMES and bool(parts.netloc)


def check_card_name(name: Any, where: str, card_path: Path | None = None) -> str:
    """``name`` when it can be a card name (and a cache folder name); else CardError.

    Args:
        name: the card's ``name``.
        where: what the message starts with (the card file, or ``weights card `x```).
        card_path: the card file, recorded on the error.
    """
    if not isinstance(name, str) or not _CARD_NAME.match(name):
        raise CardError(f"{where}: card name {name!r} must be letters, digits and . _ + - (not starting with a "
                        "dot).", card_path)
    return name


def check_file_name(value: Any, where: str, card_path: Path | None = None) -> str:
    """The card's ``file_name`` when it is a plain file name; else CardError (``where`` starts the message)."""
    if not isinstance(value, str) or not value.strip():
        raise CardError(f"{where}: `file_name` must be a non-empty file name, got {value!r}.", card_path)
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
                        "\"model.pth\" (the file is stored in the card's cache folder).", card_path)
    return value


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


def _count(data: Mapping[str, Any], key: str, path: Path, minimum: int, what: str) -> int | None:
    """``data[key]`` as an int >= ``minimum``, None when absent or "unknown"; else CardError naming the file."""
    value = data.get(key, UNKNOWN)
    if value == UNKNOWN:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CardError(f"{path}: `{key}` must be a {what} integer or \"unknown\", got {value!r}.", path)
    return value


def _bundled(value: Any, path: Path) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
        raise CardError(f"{path}: `bundled` must be a relative path inside the talkbench package, got {value!r}.",
                        path)
    return value


# --------------------------------------------------------------------------------------------------
# Reading cards
# --------------------------------------------------------------------------------------------------

def card_dirs() -> list[Path]:
    """Folders searched for cards, first wins: ``$TALKBENCH_CARDS``, then the shipped cards.

    The shipped cards are ``talkbench/_cards`` inside an installed wheel, else the repository's
    ``cards/`` folder next to the package (source checkout, editable install).
    """
    dirs = [Path(p).expanduser() for p in os.environ.get("TALKBENCH_CARDS", "").split(os.pathsep) if p]
    packaged = resources.files("talkbench") / "_cards"
    if packaged.is_dir():
        dirs.append(Path(str(packaged)))
    else:
        dirs.append(Path(__file__).resolve().parent.parent / "cards")
    return dirs


def _card_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in card_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def parse_card(path: Path) -> Card:
    """Read and validate one card file.

    Raises:
        CardError: the TOML is invalid or a field is missing / of the wrong form (the message names the file).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise CardError(f"{path}: cannot read card ({err}).", path) from err
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CardError(f"{path}: card lacks field(s) {', '.join(missing)}.", path)
    name = data["name"]
    if name != path.stem:
        raise CardError(f"{path}: card name {name!r} must equal the file name stem {path.stem!r}.", path)
    check_card_name(name, str(path), path)
    if data["role"] not in ROLES:
        raise CardError(f"{path}: `role` must be one of {', '.join(ROLES)}, got {data['role']!r}.", path)
    for key in ("title", "license", "layout"):
        _typed(data, key, str, "a string", path)
    for key in ("source", "input"):
        _typed(data, key, dict, "a table", path)
    file_name = check_file_name(data["file_name"], str(path), path)
    sha = _opt_str(data["sha256"], "sha256", path)
    if sha is not None:
        sha = sha.lower()
        if not is_sha256(sha):
            raise CardError(f"{path}: `sha256` must be 64 hex digits or \"unknown\", got {data['sha256']!r}.", path)
    prefix = _opt_str(data.get("sha256_prefix"), "sha256_prefix", path)
    if prefix is not None and not re.fullmatch(r"[0-9a-f]{4,63}", prefix.lower()):
        raise CardError(f"{path}: `sha256_prefix` must be hex digits, got {prefix!r}.", path)
    size = _count(data, "size_bytes", path, 1, "positive")
    urls = data["urls"]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise CardError(f"{path}: `urls` must be a list of strings.", path)
    for url in urls:
        if not is_http_url(url):
            raise CardError(f"{path}: URL {url!r} is refused: card URLs must be http:// or https:// URLs with a "
                            "host.", path)
    released = _typed(data, "released", bool, "true or false", path, default=True)
    if released and not urls:
        raise CardError(f"{path}: a released card needs at least one URL (or set released = false).", path)
    params = _count(data, "params", path, 0, "non-negative")
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
        CardError: no such card (``card_path`` is None; the message lists the closest matches and the known
            names), or the card file is malformed (the message names the file).
    """
    files = _card_files()
    if name not in files:
        raise CardError(f"No weights card named `{name}`.{_did_you_mean(name, files)} "
                        f"Known cards: {', '.join(sorted(files))}.")
    return parse_card(files[name])


__all__ = ["Card", "CardError", "ROLES", "UNKNOWN", "WeightsError", "card_dirs", "check_card_name",
           "check_file_name", "is_http_url", "is_sha256", "list_cards", "load_card", "parse_card", "scan_cards"]

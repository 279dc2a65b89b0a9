"""``talkbench leaderboard``: merge summary rows into the published CSV, a Markdown table and charts.

Rows of different (suite, protocol, options, transcript source) are never ranked together: the Markdown has one
table per group and each chart one panel per group. Rows copied from papers keep ``source = reported``; measured rows
are ``measured``. Within a group, a newer row of the same (model, source) replaces an older one.

Untrusted text is made safe for where it goes:

- CSV: a text cell that a spreadsheet would run as a formula (first character ``=``, ``+``, ``-``, ``@``,
  tab or carriage return) is written with a leading ``'`` (OWASP's advice for CSV injection); a cell that
  already starts with ``'`` before such a character gets one more, so that reading the leaderboard CSV back
  as a source (:func:`read_summary_rows` removes one ``'``) gives the original text exactly. Numbers
  (``-1.083``) are written as they are.
- Markdown: ``|`` is escaped as ``\\|`` and line breaks become spaces, so that a name cannot break the table.
- Charts: ``$`` is escaped, so that a name is drawn as written instead of being parsed as mathtext.
- A metric cell that is not a number is left out of the tables and charts with a warning naming the file,
  the line, the model and the column.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from talkbench.compare import CompareError, StoredRun, compare_runs, load_run
from talkbench.observers import METRIC_COLUMNS, metric_spec
from talkbench.statistics import holm
from talkbench.suites import HUMAN_TRANSCRIPTS, read_text_file
from talkbench.summary import SUMMARY_COLUMNS, IntervalSettings, write_csv

logger = logging.getLogger(__name__)

GroupKey = tuple[str, str, str]  # (suite, protocol, options)

#: First characters that make a spreadsheet evaluate a cell (OWASP CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
#: Text that gets (or, read back, had) a protective quote: optional quotes, then a trigger.
_NEUTRALISED = re.compile("^'*[" + "".join(re.escape(c) for c in FORMULA_TRIGGERS) + "]")
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


#: Key of a row read from a run directory (not a column): the run directory, for the paired tie tests.
RUN_DIR_KEY = "_run_dir"
#: Significance level of the tie marks (one-sided paired bootstrap, Holm-corrected within a group and metric).
TIE_ALPHA = 0.05

_ARROWS = {"higher": "↑", "lower": "↓", "zero": "→0"}
_BETTER = {"higher": "higher", "lower": "lower", "zero": "closer to 0"}


def is_numeric_cell(value: Any) -> bool:
    """True for a number or a string written as a plain decimal number (``-1.083``, ``1e-3``)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and bool(_DECIMAL.match(value.strip()))


def neutralise_csv_cell(value: Any) -> Any:
    """A cell safe to open in a spreadsheet: text that would run as a formula gets a leading ``'``.

    Numbers (and strings that are plain decimal numbers, such as ``-1.083``) are returned unchanged.
    A text that starts with quotes followed by a trigger gets one more quote, so that
    :func:`restore_csv_cell` inverts this exactly.
    """
    if value is None or is_numeric_cell(value):
        return value
    text = str(value)
    return "'" + text if _NEUTRALISED.match(text) else text


def restore_csv_cell(value: str) -> str:
    """Undo :func:`neutralise_csv_cell` on a cell read from a leaderboard CSV."""
    if value and value.startswith("'") and _NEUTRALISED.match(value[1:]):
        return value[1:]
    return value


def markdown_cell(value: Any) -> str:
    """Text for a Markdown table cell: ``|`` escaped as ``\\|``, line breaks replaced by spaces."""
    text = "" if value is None else str(value)
    return re.sub(r"\r\n|\r|\n", " ", text).replace("|", "\\|")


def read_summary_rows(sources: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows from run directories (their ``summary.csv``) or CSV files in the leaderboard schema.

    Files are UTF-8 (a BOM, as spreadsheets write, is allowed). Cells neutralised by
    :func:`neutralise_csv_cell` (a leaderboard CSV read back) are restored. A metric cell that is not a
    number is logged as a warning (file, line, model, column) and later ignored.

    Raises:
        ValueError: a source is neither, a CSV lacks the schema's key columns or is not UTF-8 (the
            message names the file, the line and the fix).
    """
    rows: list[dict[str, Any]] = []
    for source in sources:
        path = Path(source)
        csv_path = path / "summary.csv" if path.is_dir() else path
        if not csv_path.is_file():
            raise ValueError(f"{source}: not a run directory with summary.csv, nor a CSV file.")
        reader = csv.DictReader(io.StringIO(read_text_file(csv_path), newline=""))
        missing = {"model", "suite", "protocol", "source"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                             "expected the leaderboard schema (see README).")
        for row in reader:
            row = {k: restore_csv_cell(v) if isinstance(v, str) else v for k, v in row.items()}
            if path.is_dir():
                row[RUN_DIR_KEY] = path  # its per-clip rows make the paired tie tests possible
            for column in METRIC_COLUMNS:
                value = row.get(column)
                if value not in (None, "") and _number(value) is None:
                    logger.warning("%s: line %d (model %r): column %s holds %r, not a number; it is left out "
                                   "of the tables and charts. Write a number or leave the cell empty.",
                                   csv_path, reader.line_num, row.get("model", ""), column, value)
            rows.append(row)
    return rows


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def deduplicate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last row of each (suite, protocol, model, source, split, transcript source)."""
    kept: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(str(row.get(c, "")) for c in ("suite", "protocol", "model", "source", "split")) + (
            transcripts_of(row),)
        kept[key] = row
    return list(kept.values())


def transcripts_of(row: Mapping[str, Any]) -> str:
    """A row's transcript source: ``human`` (also rows without the column: reported rows, older runs) or
    ``asr:<card>`` (:func:`talkbench.suites.transcripts_label`)."""
    return str(row.get("transcripts", "") or "") or HUMAN_TRANSCRIPTS


def group_rows(rows: Sequence[dict[str, Any]]) -> dict[GroupKey, list[dict[str, Any]]]:
    """Rows by (suite, protocol, options), in order of first appearance: rows measured with other options that
    change numbers (e.g. LSE in pipeline mode, without the JPEG step) are never ranked together. Rows scored
    against ASR transcripts have ``transcripts=asr:<card>`` added to their options part of the key."""
    groups: dict[GroupKey, list[dict[str, Any]]] = {}
    for row in rows:
        options = str(row.get("options", "") or "")
        if transcripts_of(row) != HUMAN_TRANSCRIPTS:  # WER against ASR transcripts is never ranked with human ones
            options = ";".join(filter(None, (options, f"transcripts={transcripts_of(row)}")))
        key = (str(row.get("suite", "")), str(row.get("protocol", "")), options)
        groups.setdefault(key, []).append(row)
    return groups


def present_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metric columns that at least one row fills."""
    return [m for m in METRIC_COLUMNS if any(_number(r.get(m)) is not None for r in rows)]


def markdown(rows: Sequence[dict[str, Any]], ci: IntervalSettings = IntervalSettings()) -> str:
    """One table per (suite, protocol, options); the best value of each metric in bold; reported rows marked.

    A group's heading names its options when they differ from another group of the same suite and protocol.
    """
    lines: list[str] = []
    groups = group_rows(rows)
    runs: dict[Path, StoredRun] = {}  # each run directory read once for all its tie tests
    for (suite, protocol, options), group in groups.items():
        metrics = present_metrics(group)
        siblings = [k for k in groups if k[:2] == (suite, protocol)]
        heading = f"### {markdown_cell(suite or '?')} — protocol {markdown_cell(protocol or '?')}"
        if len(siblings) > 1:
            heading += f" — options: {markdown_cell(options or 'the protocol defaults')}"
        lines += [heading, ""]
        lines.append("| model | source | n_clips | " + " | ".join(metrics) + " |")
        lines.append("|---|---|---|" + "---|" * len(metrics))
        best = {m: _best(group, m) for m in metrics}
        tied = {m: ties(group, m, ci, runs) for m in metrics} if ci.enabled else {}
        for index, row in enumerate(group):
            cells = []
            for m in metrics:
                value = _number(row.get(m))
                text = "" if value is None else _with_interval(value, row, m)
                if value is not None and value == best[m]:
                    text = f"**{text}**"
                elif index in tied.get(m, ()):
                    text += " ≈"
                cells.append(text)
            source = str(row.get("source", ""))
            marker = f"{source} ({row['citation']})" if source == "reported" and row.get("citation") else source
            lines.append(f"| {markdown_cell(row.get('model', ''))} | {markdown_cell(marker)} | "
                         f"{markdown_cell(row.get('n_clips', ''))} | " + " | ".join(cells) + " |")
        lines.append("")
    arrows = ", ".join(f"{m} {_ARROWS[metric_spec(m).direction]}" for m in present_metrics(rows))
    lines.append(f"Higher or lower is better: {arrows}. Values are `value ± half-width` of the 95 % bootstrap "
                 "interval over clips (`summary.csv` has the exact bounds); **bold** = the best of its table; "
                 f"≈ = not significantly worse than the best (one-sided paired bootstrap on the same clips, "
                 f"Holm-corrected within the table, {TIE_ALPHA:g}); reported rows have no interval and are not tested.")
    return "\n".join(lines) + "\n"


def _with_interval(value: float, row: Mapping[str, Any], metric: str) -> str:
    text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    lo, hi = _number(row.get(f"{metric}_lo")), _number(row.get(f"{metric}_hi"))
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return text
    return f"{text} ± {(hi - lo) / 2:.2g}"


def ties(group: Sequence[Mapping[str, Any]], metric: str, ci: IntervalSettings = IntervalSettings(),
         runs: dict[Path, StoredRun] | None = None) -> set[int]:
    """Positions of the rows of ``group`` whose ``metric`` is not significantly worse than the best row's.

    Each measured row read from a run directory is compared with the best row (also measured, from a run
    directory) on their common clips by a one-sided paired bootstrap (:func:`talkbench.compare.compare_runs`;
    p = P(the best is not better)); the p-values are Holm-corrected over the group; a row is tied when its
    corrected p is at least :data:`TIE_ALPHA`. Rows that cannot be paired (reported rows, other clip sets) are
    never marked.  ``runs`` caches the run directories read so far (one read per run for a whole table).
    """
    values = [_number(r.get(metric)) for r in group]
    best_value = _best(group, metric)
    best = next((i for i, v in enumerate(values) if v is not None and v == best_value), None)
    if best is None or RUN_DIR_KEY not in group[best]:
        return set()
    candidates, p_values = [], []
    for i, row in enumerate(group):
        if i == best or values[i] is None or RUN_DIR_KEY not in row:
            continue
        try:
            (result,) = compare_runs(_stored(row[RUN_DIR_KEY], runs), _stored(group[best][RUN_DIR_KEY], runs), ci,
                                     [metric])
        except (CompareError, ValueError) as err:
            logger.info("%s: no tie test of %s against %s (%s)", metric, row.get("model"), group[best].get("model"),
                        err)
            continue
        candidates.append(i)
        p_values.append(result.p_value)
    adjusted = holm(p_values) if p_values else []
    return {i for i, p in zip(candidates, adjusted) if not math.isnan(p) and p >= TIE_ALPHA}


def _best(rows: Sequence[dict[str, Any]], metric: str) -> float | None:
    values = [v for v in (_number(r.get(metric)) for r in rows) if v is not None]
    if not values:
        return None
    direction = metric_spec(metric).direction
    if direction == "zero":
        return min(values, key=abs)
    return max(values) if direction == "higher" else min(values)


def plot_metric(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> None:
    """One PNG bar chart for ``metric``: a panel per (suite, protocol); reported bars hatched."""
    import matplotlib  # lazy: matplotlib (~0.5 s to import) only when a chart is drawn, not for CSV/Markdown

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: [r for r in g if _number(r.get(metric)) is not None] for k, g in group_rows(rows).items()}
    groups = {k: g for k, g in groups.items() if g}
    fig, axes = plt.subplots(1, len(groups), figsize=(max(4.0, 2.2 + 0.9 * max(len(g) for g in groups.values()))
                                                       * len(groups), 3.6), squeeze=False)
    for ax, ((suite, protocol, options), group) in zip(axes[0], groups.items()):
        values = [_number(r[metric]) for r in group]
        errors = np.array([_error_bar(r, metric, v) for r, v in zip(group, values)]).T
        bars = ax.bar(range(len(group)), values, yerr=errors, capsize=3, ecolor="#333333",
                      color=["#bbbbbb" if r.get("source") == "reported" else "#3b6ea8" for r in group])
        for bar, row in zip(bars, group):
            if row.get("source") == "reported":
                bar.set_hatch("//")
        ax.set_xticks(range(len(group)), [_plain_label(r.get("model", "")) for r in group], rotation=30,
                      ha="right", fontsize=8)
        ax.set_title(_plain_label(f"{suite} / {protocol}" + (f"\n{options}" if options else "")), fontsize=8)
        better = _BETTER[metric_spec(metric).direction]
        ax.set_ylabel(f"{metric} ({better} is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stored(run_dir: Path, runs: dict[Path, StoredRun] | None) -> StoredRun:
    """The run directory read once (``runs`` caches it), for repeated paired tests."""
    if runs is None:
        return load_run(run_dir)
    if run_dir not in runs:
        runs[run_dir] = load_run(run_dir)
    return runs[run_dir]


def _error_bar(row: Mapping[str, Any], metric: str, value: float) -> tuple[float, float]:
    """(below, above) the bar: the interval's distance to the value; (0, 0) without an interval."""
    lo, hi = _number(row.get(f"{metric}_lo")), _number(row.get(f"{metric}_hi"))
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return 0.0, 0.0
    return max(value - lo, 0.0), max(hi - value, 0.0)


def _plain_label(value: Any) -> str:
    """Text for a chart label, shown literally: ``$`` would start Matplotlib mathtext (and can crash it)."""
    return str(value).replace("$", r"\$")


def build_leaderboard(sources: Sequence[Path], out_csv: Path, ci: IntervalSettings = IntervalSettings()
                      ) -> list[dict[str, Any]]:
    """Merge summary rows into ``out_csv`` (+ ``.md`` and one ``<stem>_<metric>.png`` per metric).

    Text cells that a spreadsheet would run as formulas are neutralised in the CSV
    (:func:`neutralise_csv_cell`); the returned rows hold the original values.

    Returns:
        the rows written (values as read, not neutralised).
    """
    rows = deduplicate(read_summary_rows(sources))
    if not rows:
        raise ValueError("no summary rows found in the given sources.")
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out_csv, [{c: neutralise_csv_cell(row.get(c, "")) for c in SUMMARY_COLUMNS} for row in rows],
              SUMMARY_COLUMNS)
    out_csv.with_suffix(".md").write_text(markdown(rows, ci))
    for metric in present_metrics(rows):
        plot_metric(rows, metric, out_csv.with_name(f"{out_csv.stem}_{metric}.png"))
    logger.info("wrote %s (+ .md, %d chart(s))", out_csv, len(present_metrics(rows)))
    return rows

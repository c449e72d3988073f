"""Metric tables in the seed papers' layout: methods as rows, metrics as columns.

Each cell is the point value with its 95% interval, ``0.812 (0.701-0.903)``; in every column the
best value is bold and the second best underlined (ties share the mark). The same table is
rendered as CSV, LaTeX (booktabs), Markdown and HTML.

>>> long = pd.DataFrame({"model": ["a", "b"], "metric": ["auroc", "auroc"], "value": [0.7, 0.8],
...                      "ci_low": [0.6, 0.7], "ci_high": [0.8, 0.9]})
>>> table = build_table(long, metrics=["auroc"])
>>> table.cells[("b", "auroc")].rank, table.cells[("a", "auroc")].rank
(1, 2)
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import pandas as pd

# metrics where a smaller value is better; every other ranked metric is larger-is-better
LOWER_IS_BETTER = frozenset({"ibs"})
# reported but never ranked (counts and test statistics)
ONE_CLASS_MARK = "(one class)"
ONE_CLASS_NOTE = (
    f"{ONE_CLASS_MARK}: the model calls every test patient the same class at its operating point, so "
    "its threshold metrics (accuracy, F1, sensitivity, specificity, G-mean) compare nothing."
)
UNRANKED = frozenset(
    {"n", "n_events", "n_high_risk", "n_low_risk", "logrank_chi2", "logrank_p", "p_delong_vs_best"}
)
BINARY_COLUMNS = (
    "auroc", "accuracy", "f1", "sensitivity", "specificity", "ppv", "npv", "gmean",
    "balanced_accuracy",
)  # fmt: skip
SURVIVAL_FIRST = ("c_harrell", "c_uno")
SURVIVAL_LAST = ("auc_mean", "ibs", "logrank_p")
HEADERS = {
    "auroc": "AUROC",
    "accuracy": "ACC",
    "f1": "F1",
    "sensitivity": "SEN",
    "specificity": "SPE",
    "ppv": "PPV",
    "npv": "NPV",
    "gmean": "G-mean",
    "balanced_accuracy": "BACC",
    "c_harrell": "C (Harrell)",
    "c_uno": "C (Uno)",
    "auc_mean": "mean t-AUC",
    "ibs": "IBS",
    "logrank_p": "log-rank p",
    "p_delong_vs_best": "DeLong p vs best",
    "n": "n",
}


def header(metric: str) -> str:
    """Display name of a metric column: ``auroc_macro`` -> ``AUROC (macro)``, ``auc_365d`` ->
    ``t-AUC 365 d``."""
    if metric in HEADERS:
        return HEADERS[metric]
    if metric.startswith("auc_") and metric.endswith("d"):
        return f"t-AUC {metric[4:-1]} d"
    base, _, suffix = metric.rpartition("_")
    if base in HEADERS:
        return f"{HEADERS[base]} ({suffix})"
    return metric


def default_metrics(long: pd.DataFrame, *, task: str) -> list[str]:
    """The columns of the main table for the metrics present in ``long``."""
    present = list(dict.fromkeys(long["metric"].astype(str)))
    if task == "survival":
        horizons = [
            m for m in present if m.startswith("auc_") and m[4:-1].replace(".", "").isdigit()
        ]
        wanted = [*SURVIVAL_FIRST, *horizons, *SURVIVAL_LAST]
    elif "auroc" in present:
        wanted = list(BINARY_COLUMNS)
    else:  # multi-class: the macro means and the overall accuracy
        wanted = [f"{m}_macro" if m != "accuracy" else m for m in BINARY_COLUMNS]
    return [m for m in wanted if m in present]


@dataclass
class Cell:
    value: float
    low: float = math.nan
    high: float = math.nan
    rank: int | None = None  # 1 best, 2 second best, None otherwise or unranked


@dataclass
class MetricTable:
    models: list[str]
    metrics: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    p_delong: dict[str, float] = field(default_factory=dict)  # model -> p of AUROC vs best
    one_class: set[str] = field(default_factory=set)  # models that call every patient one class

    def cell(self, model: str, metric: str) -> Cell:
        return self.cells.get((model, metric), Cell(math.nan))

    def label(self, model: str) -> str:
        """The row's name, marked when its threshold metrics compare nothing."""
        return f"{model} {ONE_CLASS_MARK}" if model in self.one_class else model


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def build_table(
    long: pd.DataFrame, *, metrics: list[str], models: list[str] | None = None
) -> MetricTable:
    """Wide table from the evaluation's long table (``model, metric, value, ci_low, ci_high``
    and optionally ``p_delong_vs_best``), with best and second best marked per column."""
    long = long.copy()
    long["model"] = long["model"].astype(str)
    models = models or list(dict.fromkeys(long["model"]))
    table = MetricTable(models=list(models), metrics=list(metrics))
    for row in long.to_dict("records"):
        if row["model"] not in models:
            continue
        if row["metric"] in metrics:
            table.cells[(row["model"], row["metric"])] = Cell(
                float(row["value"]) if _finite(row["value"]) else math.nan,
                float(row["ci_low"]) if _finite(row.get("ci_low")) else math.nan,
                float(row["ci_high"]) if _finite(row.get("ci_high")) else math.nan,
            )
        if str(row["metric"]).startswith("auroc") and _finite(row.get("p_delong_vs_best")):
            table.p_delong.setdefault(row["model"], float(row["p_delong_vs_best"]))
    table.one_class = one_class_models(long) & set(models)
    for metric in metrics:
        if metric not in UNRANKED:
            _rank_column(table, metric)
    return table


def one_class_models(long: pd.DataFrame) -> set[str]:
    """Models whose pooled test predictions are all one class (the evaluation's
    ``predicted_classes`` row)."""
    rows = long[long["metric"] == "predicted_classes"]
    values = pd.to_numeric(rows["value"], errors="coerce")
    return set(rows.loc[values < 2, "model"].astype(str))


def _rank_column(table: MetricTable, metric: str) -> None:
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    values = sorted(
        {
            round(sign * c.value, 12)
            for (m, k), c in table.cells.items()
            if k == metric and _finite(c.value)
        },
        reverse=True,
    )
    for (_, key), cell in table.cells.items():
        if key != metric or not _finite(cell.value):
            continue
        score = round(sign * cell.value, 12)
        if score == values[0]:
            cell.rank = 1
        elif len(values) > 1 and score == values[1]:
            cell.rank = 2


# ----------------------------------------------------------------------------- formatting


def format_number(value: float, decimals: int = 3) -> str:
    if not _finite(value):
        return "n/a"
    if abs(value) >= 1000 or value == int(value) and abs(value) >= 10:
        return f"{value:.0f}"
    if 0 < abs(value) < 10 ** (-decimals):
        return f"{value:.1e}"
    return f"{value:.{decimals}f}"


def interval_text(cell: Cell, decimals: int = 3, dash: str = "-") -> str:
    """``(0.701-0.903)``, or empty when there is no interval."""
    if not (_finite(cell.low) and _finite(cell.high)):
        return ""
    return f"({format_number(cell.low, decimals)}{dash}{format_number(cell.high, decimals)})"


def _plain(cell: Cell, decimals: int, dash: str = "-") -> tuple[str, str]:
    return format_number(cell.value, decimals), interval_text(cell, decimals, dash)


def _joined(value: str, interval: str) -> str:
    return f"{value} {interval}" if interval else value


def external_frame(
    internal: pd.DataFrame, external: pd.DataFrame, *, metric: str, decimals: int = 3
) -> pd.DataFrame:
    """One row per externally scored model: ``metric`` with its interval on the internal
    (out-of-fold) and the external patients, and the external n."""
    inside = build_table(internal, metrics=[metric])
    outside = build_table(external, metrics=[metric, "n"])
    rows = [
        {
            "model": model,
            f"internal {header(metric)}": _joined(*_plain(inside.cell(model, metric), decimals)),
            f"external {header(metric)}": _joined(*_plain(outside.cell(model, metric), decimals)),
            "external n": format_number(outside.cell(model, "n").value, 0),
        }
        for model in outside.models
    ]
    return pd.DataFrame(rows)


def to_frame(table: MetricTable, *, decimals: int = 3) -> pd.DataFrame:
    """Formatted cells (``value (low-high)``) as a DataFrame: the CSV table."""
    rows = []
    for model in table.models:
        row = {"model": table.label(model)}
        for metric in table.metrics:
            row[header(metric)] = _joined(*_plain(table.cell(model, metric), decimals))
        if table.p_delong:
            row[HEADERS["p_delong_vs_best"]] = _p_text(table, model, decimals)
        rows.append(row)
    return pd.DataFrame(rows)


def _p_text(table: MetricTable, model: str, decimals: int) -> str:
    if model in table.p_delong:
        return format_number(table.p_delong[model], decimals)
    return "best" if table.p_delong else ""


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                          ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):  # fmt: skip
        text = text.replace(char, escaped)
    return text


def to_latex(table: MetricTable, *, decimals: int = 3, caption: str = "", label: str = "") -> str:
    """A booktabs table; best value ``\\textbf``, second ``\\underline``."""
    columns = [header(m) for m in table.metrics]
    if table.p_delong:
        columns.append(HEADERS["p_delong_vs_best"])
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
        " & ".join(["Method", *(_latex_escape(c) for c in columns)]) + r" \\",
        r"\midrule",
    ]
    for model in table.models:
        cells = [_latex_escape(table.label(model))]
        for metric in table.metrics:
            cell = table.cell(model, metric)
            value, interval = _plain(cell, decimals, dash="--")
            value = {1: rf"\textbf{{{value}}}", 2: rf"\underline{{{value}}}"}.get(cell.rank, value)
            cells.append(_joined(value, interval))
        if table.p_delong:
            cells.append(_p_text(table, model, decimals))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_markdown(table: MetricTable, *, decimals: int = 3) -> str:
    """A pipe table; best ``**bold**``, second ``<u>underlined</u>``."""
    columns = ["Method", *(header(m) for m in table.metrics)]
    if table.p_delong:
        columns.append(HEADERS["p_delong_vs_best"])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join([":---"] + [":---:"] * (len(columns) - 1)) + "|",
    ]
    for model in table.models:
        cells = [table.label(model).replace("|", "/")]
        for metric in table.metrics:
            cell = table.cell(model, metric)
            value, interval = _plain(cell, decimals)
            value = {1: f"**{value}**", 2: f"<u>{value}</u>"}.get(cell.rank, value)
            cells.append(_joined(value, interval))
        if table.p_delong:
            cells.append(_p_text(table, model, decimals))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: MetricTable, *, decimals: int = 3, css_class: str = "metrics") -> str:
    """An HTML table; best ``<strong>``, second ``<u>``."""
    columns = ["Method", *(header(m) for m in table.metrics)]
    if table.p_delong:
        columns.append(HEADERS["p_delong_vs_best"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for model in table.models:
        cells = [f"<th scope='row'>{html.escape(table.label(model))}</th>"]
        for metric in table.metrics:
            cell = table.cell(model, metric)
            value, interval = _plain(cell, decimals)
            value = {1: f"<strong>{value}</strong>", 2: f"<u>{value}</u>"}.get(cell.rank, value)
            small = f" <span class='ci'>{interval}</span>" if interval else ""
            cells.append(f"<td>{value}{small}</td>")
        if table.p_delong:
            cells.append(f"<td>{_p_text(table, model, decimals)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table class='{css_class}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def frame_to_html(frame: pd.DataFrame, *, css_class: str = "plain") -> str:
    """A plain table (cohort, registration) with escaped cells."""
    return frame.to_html(index=False, classes=css_class, border=0, na_rep="", escape=True)


def frame_to_markdown(frame: pd.DataFrame) -> str:
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * len(columns)) + "|"]
    for row in frame.itertuples(index=False):
        cells = ["" if pd.isna(v) else str(v).replace("|", "/").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frame_to_latex(frame: pd.DataFrame, *, caption: str = "") -> str:
    columns = [str(c) for c in frame.columns]
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{" + "l" * len(columns) + "}",
        r"\toprule",
        " & ".join(_latex_escape(c) for c in columns) + r" \\",
        r"\midrule",
    ]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join("" if pd.isna(v) else _latex_escape(str(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"

"""Assemble the report from a ``results/`` tree: tables, figures, ``report.md``, ``index.html``.

Reads what the evaluation, integration and imaging stages wrote (``metrics/all.tsv``,
``metrics/summary.json``, ``metrics/{model}_km.tsv``, the prediction files, ``splits/cohort.tsv``
and the per-patient sidecars and QC pictures) and never imports torch. Every output is written
atomically; ``index.html`` last, so its presence marks a complete report.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lungfusion.artifacts import write_text_atomic
from lungfusion.config import section_with_defaults
from lungfusion.evaluation.tables import discover_predictions, read_predictions
from lungfusion.fusion_grid import parse_grid_name
from lungfusion.report import cohort as cohort_lib
from lungfusion.report import figures, tables
from lungfusion.report.html import Section, figure_block, image_tag, paragraph, render_page

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Everything read from ``results/``."""

    metrics: pd.DataFrame
    summary: dict
    predictions: dict[str, pd.DataFrame]
    km: dict[str, pd.DataFrame]
    cohort: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def read_inputs(results: Path, *, task: str) -> Inputs:
    warnings: list[str] = []
    all_path = results / "metrics" / "all.tsv"
    if all_path.is_file():
        metrics = pd.read_csv(all_path, sep="\t", dtype={"model": str, "metric": str})
    else:
        warnings.append(f"no metric table {all_path}: run `lungfusion evaluate` first")
        metrics = pd.DataFrame(columns=["model", "metric", "value", "ci_low", "ci_high"])
    summary = cohort_lib.read_json_or_none(results / "metrics" / "summary.json") or {}
    models = list(dict.fromkeys(metrics["model"].astype(str)))
    predictions = _read_predictions(results, models, warnings)
    km = {}
    if task == "survival":
        for model in models:
            path = results / "metrics" / f"{model}_km.tsv"
            if path.is_file():
                km[model] = pd.read_csv(path, sep="\t")
    return Inputs(metrics, summary, predictions, km, cohort_lib.read_cohort(results), warnings)


def _read_predictions(results: Path, models: list[str], warnings: list[str]) -> dict:
    found: dict[str, list[Path]] = {}
    for folder in ("train", "integrate"):
        if not (results / folder).is_dir():
            continue
        try:
            for model, files in discover_predictions([str(results / folder)]).items():
                found.setdefault(model, []).extend(files)
        except FileNotFoundError as error:
            warnings.append(str(error))
    wanted = models or sorted(found)
    out = {}
    for model in wanted:
        if model not in found:
            warnings.append(f"{model}: no predictions.tsv found for its figures")
            continue
        try:
            out[model] = read_predictions(sorted(set(found[model])))[0]
        except (ValueError, KeyError) as error:
            warnings.append(f"{model}: predictions unreadable: {error}")
    return out


def fold_cuts(summary: dict) -> dict[str, dict[int, float]]:
    """Per model and fold, the positive-class threshold the evaluation used."""
    cuts = {}
    for model, info in (summary.get("models") or {}).items():
        per_fold = ((info or {}).get("threshold") or {}).get("per_fold") or {}
        cuts[model] = {
            int(k): float(v["threshold"]) for k, v in per_fold.items() if "threshold" in v
        }
    return cuts


def threshold_rule(summary: dict) -> str:
    for info in (summary.get("models") or {}).values():
        rule = ((info or {}).get("threshold") or {}).get("rule")
        if rule:
            return rule
    return "threshold: see metrics/summary.json"


# ------------------------------------------------------------------------------ writing


@dataclass
class Written:
    """What the report wrote, for the page and the Markdown."""

    figures: dict[str, tuple[Path, str]] = field(default_factory=dict)  # key -> (path, caption)
    tables: dict[str, list[Path]] = field(default_factory=dict)


def _write_table_files(stem: Path, frame: pd.DataFrame, latex: str, markdown: str) -> list[Path]:
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".tex"), stem.with_suffix(".md")]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    write_text_atomic(paths[1], latex)
    write_text_atomic(paths[2], markdown)
    return paths


def build_report(
    results: str | Path,
    out_dir: str | Path,
    *,
    task: str = "classification",
    classes: list[str] | tuple[str, ...] = ("ADC", "SQC"),
    settings: dict | None = None,
) -> Path:
    """Write the whole report under ``out_dir``; returns the path of ``index.html``."""
    settings = section_with_defaults({"report": settings}, "report")
    results, out_dir = Path(results), Path(out_dir)
    classes = list(classes)
    decimals = int(settings["decimals"])
    inputs = read_inputs(results, task=task)
    written = Written()

    # metric table (methods x metrics)
    metric_names = settings["metrics"] or tables.default_metrics(inputs.metrics, task=task)
    metric_table = tables.build_table(inputs.metrics, metrics=list(metric_names))
    ci_text = inputs.summary.get("confidence_intervals", "95% bootstrap intervals")
    caption = f"Out-of-fold test performance; value ({ci_text}). Best in bold, second underlined."
    written.tables["metrics"] = _write_table_files(
        out_dir / "tables" / "metrics",
        tables.to_frame(metric_table, decimals=decimals),
        tables.to_latex(metric_table, decimals=decimals, caption=caption, label="tab:metrics"),
        tables.to_markdown(metric_table, decimals=decimals),
    )
    write_text_atomic(out_dir / "tables" / "metrics_long.csv", inputs.metrics.to_csv(index=False))

    # cohort, exclusions, registration, late-fusion patterns
    patients = cohort_lib.patient_ids(results, inputs.cohort)
    plain = {
        "cohort": (
            cohort_lib.cohort_summary(inputs.cohort, classes=classes),
            "Cohort",
            "Patients per class in the sample sheet, included in the analysis (with CT and PET, "
            "or CT only) and excluded.",
        ),
        "exclusions": (
            cohort_lib.exclusions(inputs.cohort),
            "Exclusions",
            "Excluded patients and why.",
        ),
        "registration": (
            cohort_lib.registration_quality(results, patients),
            "Registration quality",
            "PET-to-CT registration per patient: Mattes mutual information before and after "
            "refinement (lower is better), whether the refinement was kept, the movement found "
            "and the time taken (seconds).",
        ),
        "fusion_patterns": (
            cohort_lib.pattern_counts(results),
            "Late-fusion patterns",
            "Patients per modality pattern of each late-fusion integrator (which submodels "
            "scored them; e.g. ct+clinical when the PET is missing).",
        ),
    }
    _external(results, inputs.metrics, plain, task=task, decimals=decimals)
    _networks(results, plain)
    for name, (frame, title, _) in plain.items():
        written.tables[name] = _write_table_files(
            out_dir / "tables" / name, frame,
            tables.frame_to_latex(frame, caption=title), tables.frame_to_markdown(frame),
        )  # fmt: skip

    # figures
    fig_dir = out_dir / "figures"
    predictions = inputs.predictions
    if task == "classification" and predictions:
        rule = threshold_rule(inputs.summary)
        specs = {
            "roc": (
                figures.roc_figure,
                "ROC curves of all models (pooled out-of-fold test predictions).",
            ),
            "pr": (figures.pr_figure, "Precision-recall curves; dashed: prevalence."),
        }
        for key, (draw, text) in specs.items():
            written.figures[key] = (draw(predictions, classes, fig_dir / f"{key}.png"), text)
        written.figures["calibration"] = (
            figures.calibration_figure(
                predictions, classes, fig_dir / "calibration.png",
                n_bins=int(settings["calibration_bins"]),
            ),
            "Calibration (reliability) of the predicted probabilities.",
        )  # fmt: skip
        written.figures["confusion"] = (
            figures.confusion_figure(
                predictions,
                classes,
                fig_dir / "confusion.png",
                thresholds=fold_cuts(inputs.summary),
            ),
            f"Confusion matrices at the evaluation's threshold ({rule}).",
        )
    if task == "survival" and inputs.km:
        p_values = _metric_values(inputs.metrics, "logrank_p")
        written.figures["km"] = (
            figures.km_figure(inputs.km, fig_dir / "km.png", logrank_p=p_values),
            "Kaplan-Meier curves of high/low risk groups (split at each fold's validation "
            "median risk) with the log-rank p-value.",
        )
    grid = _fusion_grid(results, inputs.metrics)
    if grid is not None:
        written.figures["fusion_grid"] = (
            figures.grid_heatmap(*grid, fig_dir / "fusion_grid.png"),
            "Seed 000's fusion-depth grid: pooled test AUROC of the multi-stage network with L "
            "stages (a fusion block after each) of N residual blocks, each cell a model of its "
            "own on the same folds; outlined, the cell with the lowest mean validation loss.",
        )
    robustness = _robustness(results, out_dir, written, plain)
    if robustness is not None:
        written.figures["robustness"] = (
            figures.robustness_figure(robustness, fig_dir / "robustness.png"),
            "Test-time robustness of the CT+PET networks, and with PET withheld of the "
            "late-fusion integrator (its no-PET pattern model): AUROC (bootstrap interval "
            "shaded) with the PET moved or withheld (the robustness section).",
        )
    _sfsa_exhaustive(results, out_dir, written, plain)
    entries = cohort_lib.qc_entries(results, patients)[: int(settings["max_gallery"])]
    _with_saliency(results, out_dir, written, plain, entries)
    gallery = figures.qc_gallery_figure(entries, fig_dir / "qc_gallery.png")
    if gallery is not None:
        written.figures["qc_gallery"] = (gallery, "Per-patient ROI QC pictures.")

    write_text_atomic(out_dir / "report.md", _markdown(settings, task, inputs, written, plain))
    page = _html(settings, task, classes, inputs, written, plain, metric_table, entries)
    index = out_dir / "index.html"
    write_text_atomic(index, page)  # last: marks a complete report
    log.info(
        "report: %d models, %d figures -> %s", len(metric_table.models), len(written.figures), index
    )
    return index


def _external(
    results: Path, internal: pd.DataFrame, plain: dict, *, task: str, decimals: int
) -> None:
    """The external validation's headline metric beside the internal one, per model (nothing
    when ``evaluate.external`` is off)."""
    path = results / "external" / "metrics" / "all.tsv"
    if not path.is_file():
        return
    external = pd.read_csv(path, sep="\t", dtype={"model": str, "metric": str})
    metric = tables.default_metrics(external, task=task)[0]
    plain["external"] = (
        tables.external_frame(internal, external, metric=metric, decimals=decimals),
        "External validation",
        "Each model on the external collection (imaging stages as for the internal patients; "
        "never fit on): the mean of its fold models' predictions, the late-fusion integrator "
        "fold by fold then averaged, beside the internal out-of-fold result; the threshold "
        "metrics and the rest are in external/metrics/all.tsv.",
    )


def _networks(results: Path, plain: dict) -> None:
    """How each network was trained: its encoders' initialisation, the freezing, the auxiliary
    targets (from the folds' summaries), and whether pretraining saw the test patients."""
    rows = []
    for folder in sorted((results / "train").glob("*")):
        summaries = [
            cohort_lib.read_json_or_none(p) or {} for p in sorted(folder.glob("fold*/summary.json"))
        ]
        summaries = [s for s in summaries if "init" in s]
        if not summaries:
            continue  # a table model, or a run from before train.init
        first = summaries[0]
        init, settings = first["init"], first.get("settings", {})
        encoder = init.get("encoder") or {}
        loaded = sorted({key for s in summaries for key in s["init"].get("loaded", {})})
        freeze = settings.get("freeze_encoder_epochs", 0)
        rows.append({
            "model": folder.name,
            "initialisation": init["mode"] + (f" ({', '.join(loaded)})" if loaded else ""),
            "encoder": encoder.get("arch", "native"),
            "frozen epochs": ("all" if freeze == -1 else freeze) if loaded else "-",
            "encoder lr share": settings.get("encoder_lr_factor") if loaded else "-",
            "auxiliary targets": ", ".join(first.get("aux_targets", {}).get("features", [])) or "-",
            "epochs run": ", ".join(str(s.get("epochs_run")) for s in summaries),
        })  # fmt: skip
    if not rows:
        return
    pretrain = [
        cohort_lib.read_json_or_none(p) or {}
        for p in sorted(results.glob("pretrain/*/fold*/summary.json"))
    ]
    transductive = any(s.get("transductive") for s in pretrain)
    objectives = sorted({s.get("objective", "masked") for s in pretrain})
    plain["networks"] = (
        pd.DataFrame(rows),
        "Networks",
        "Each network's encoders (train.encoder), where they started (train.init: scratch, the "
        "fold's label-free pretraining, or a checkpoint file), how long they stayed frozen, "
        "their learning rate as a share of train.lr, and the label-free auxiliary targets. "
        + (f"Pretraining objective: {', '.join(objectives)}. " if objectives else "")
        + ("Pretraining was transductive: it also read each fold's test patients' images "
           "(never their labels)." if transductive else
           "Pretraining, where used, never read a fold's test patients." if pretrain else ""),
    )  # fmt: skip


def _fusion_grid(results: Path, metrics: pd.DataFrame) -> tuple | None:
    """AUROC per (L, N) cell of the fusion-depth grid and the cell chosen on validation (the
    lowest mean of the folds' best validation losses); None without a grid."""
    cells = {name: parse_grid_name(name) for name in metrics["model"].astype(str).unique()}
    cells = {name: cell for name, cell in cells.items() if cell is not None}
    if not cells:
        return None
    auroc = _metric_values(metrics, "auroc")
    table = pd.DataFrame(
        [
            {"L": stages, "N": blocks, "auroc": auroc.get(name, float("nan"))}
            for name, (stages, blocks) in cells.items()
        ]  # fmt: skip
    ).pivot(index="L", columns="N", values="auroc")
    losses = {}
    for name, cell in cells.items():
        values = [
            cohort_lib.read_json_or_none(path).get("best_val_loss")
            for path in sorted((results / "train" / name).glob("fold*/summary.json"))
        ]
        values = [v for v in values if v is not None]
        if values:
            losses[cell] = sum(values) / len(values)
    chosen = min(losses, key=losses.get) if losses else None
    return table, chosen


def _robustness(results: Path, out_dir: Path, written, plain: dict) -> pd.DataFrame | None:
    """The robustness stage's summary as a report table (None when the stage did not run)."""
    path = results / "robustness" / "summary.tsv"
    if not path.is_file():
        return None
    summary = pd.read_csv(path, sep="\t")
    if summary.empty:
        return None
    frame = summary.assign(
        auroc=[f"{v:.3f} ({lo:.3f}-{hi:.3f})" for v, lo, hi in
               zip(summary.auroc, summary.ci_low, summary.ci_high, strict=True)]
    )[["model", "perturbation", "level", "n", "auroc", "withheld_pet"]]  # fmt: skip
    plain["robustness"] = (
        frame,
        "Robustness to a misaligned or missing PET",
        "Each fold's CT+PET network scored on its own test patients with the registered PET "
        "moved rigidly (shift_mm along a direction drawn per patient; rotation_deg about a random "
        "axis through the ROI centre) or withheld (drop_pet: that share of the test patients "
        "gets a zero PET and has_pet false); pooled AUROC with its bootstrap interval. The "
        "late-fusion integrator is scored at the drop_pet levels only, on the same withheld "
        "patients: their PET-reading submodels count as missing, so each fold's no-PET pattern "
        "model scores them (withheld_pet says how each row's model received the missing PET).",
    )
    written.tables["robustness"] = _write_table_files(
        out_dir / "tables" / "robustness", frame,
        tables.frame_to_latex(frame, caption="Robustness"), tables.frame_to_markdown(frame),
    )  # fmt: skip
    return summary


def _sfsa_exhaustive(results: Path, out_dir: Path, written, plain: dict) -> None:
    """The SFSA choice of each fold against every MMTM position subset, from the ``exhaustive``
    records of ``sfsa/fold*/best.json`` (``train.sfsa_exhaustive``); nothing without any."""
    rows = []
    for path in sorted(results.glob("sfsa/fold*/best.json")):
        best = json.loads(path.read_text(encoding="utf-8"))
        record = best.get("exhaustive")
        if record:
            rows.append({
                "fold": best["fold"],
                "greedy choice": record["greedy_label"],
                "rank": f"{record['rank']} of {record['n_subsets']}",
                "gap to the best": round(record["val_loss_gap"], 4),
                "best subset": record["best_label"],
            })  # fmt: skip
    if not rows:
        return
    frame = pd.DataFrame(rows).sort_values("fold")
    plain["sfsa_exhaustive"] = (
        frame,
        "SFSA against exhaustive search",
        "Per fold, the MMTM positions chosen by the sequential forward search against every "
        "subset of positions, each trained from scratch on the fold's training patients: the "
        "choice's rank by validation loss (1 = best; none = no MMTM module), its validation-loss "
        "gap to the best subset, and that subset. The sfsa model remains the greedy choice.",
    )
    written.tables["sfsa_exhaustive"] = _write_table_files(
        out_dir / "tables" / "sfsa_exhaustive", frame,
        tables.frame_to_latex(frame, caption="SFSA against exhaustive search"),
        tables.frame_to_markdown(frame),
    )  # fmt: skip


def _with_saliency(results: Path, out_dir: Path, written, plain: dict, entries: list) -> None:
    """The saliency stage's cohort summary as a report table, and each gallery entry's overlay
    (of the first network explained) beside its ROI; nothing when the stage did not run."""
    path = results / "saliency" / "summary.tsv"
    if not path.is_file():
        return
    summary = pd.read_csv(path, sep="\t")
    plain["saliency"] = (
        summary.round(3),
        "Saliency",
        "Occlusion sensitivity of each CT+PET network per modality on its test patients: the "
        "median share of the positive saliency inside the lesion at the ROI's centre, per "
        "modality, and of all positive saliency, the PET's share. Overlays (first network) "
        "beside the ROIs in the QC gallery.",
    )
    written.tables["saliency"] = _write_table_files(
        out_dir / "tables" / "saliency", summary.round(3),
        tables.frame_to_latex(summary.round(3), caption="Saliency"),
        tables.frame_to_markdown(summary.round(3)),
    )  # fmt: skip
    if summary.empty:
        return
    model = str(summary["model"].iloc[0])
    for entry in entries:
        overlay = results / "saliency" / model / f"{entry['patient_id']}.png"
        if overlay.is_file():
            entry["saliency_png"] = overlay


def _metric_values(metrics: pd.DataFrame, name: str) -> dict[str, float]:
    rows = metrics[metrics["metric"] == name]
    return {
        str(m): float(v) for m, v in zip(rows["model"], rows["value"], strict=True) if pd.notna(v)
    }


def _notes(task: str, inputs: Inputs) -> list[str]:
    notes = []
    if inputs.summary.get("pooling"):
        notes.append(f"Pooling: {inputs.summary['pooling']}.")
    if inputs.summary.get("confidence_intervals"):
        notes.append(f"Intervals: {inputs.summary['confidence_intervals']}.")
    if task == "classification":
        notes.append(f"Threshold: {threshold_rule(inputs.summary)}.")
        if not inputs.metrics.empty and tables.one_class_models(inputs.metrics):
            notes.append(tables.ONE_CLASS_NOTE)
        delong = inputs.summary.get("delong")
        if isinstance(delong, dict):
            for metric, record in delong.items():
                notes.append(
                    f"DeLong tests of {metric} against the best model ({record.get('best')})."
                )
    return notes + [f"Warning: {w}" for w in inputs.warnings]


def _markdown(settings, task, inputs, written, plain) -> str:
    decimals_note = "Best in **bold**, second <u>underlined</u>; each value with its interval."
    lines = [f"# {settings['title']}", "", f"Task: {task}.", ""]
    lines += [f"- {note}" for note in _notes(task, inputs)] + [""]
    lines += ["## Performance", "", decimals_note, ""]
    lines.append(written.tables["metrics"][2].read_text(encoding="utf-8"))
    for key, (path, caption) in written.figures.items():
        if key == "qc_gallery":
            continue
        lines += [f"![{key}](figures/{path.name})", "", f"*{caption}*", ""]
    for name, (_, title, description) in plain.items():
        table_text = written.tables[name][2].read_text(encoding="utf-8")
        lines += [f"## {title}", "", description, "", table_text, ""]
    if "qc_gallery" in written.figures:
        lines += ["## QC gallery", "", "![qc gallery](figures/qc_gallery.png)", ""]
    return "\n".join(lines) + "\n"


def _gallery_html(entries: list[dict], width: int) -> str:
    items = []
    for entry in entries:
        facts = [entry["status"]]
        if entry.get("crop"):
            facts.append(f"crop {entry['crop']}")
        facts.append("PET" if entry.get("has_pet") else "no PET")
        if entry.get("lung_ml") is not None:
            facts.append(f"lungs {entry['lung_ml']:.0f} mL")
        caption = f"{entry['patient_id']}: " + ", ".join(facts)
        extra = "; ".join([*entry.get("warnings", []), entry.get("reason", "")]).strip("; ")
        bad = " class='bad'" if entry["status"] != "ok" else ""
        picture = (
            image_tag(figures.thumbnail(entry["png"], width=width), alt=f"QC {entry['patient_id']}")
            if entry.get("png") is not None
            else "<p class='bad'>no QC picture</p>"
        )
        if entry.get("saliency_png") is not None:
            picture += image_tag(
                figures.thumbnail(entry["saliency_png"], width=width),
                alt=f"saliency {entry['patient_id']}",
            )
        items.append(
            f"<figure>{picture}<figcaption{bad}>{html.escape(caption)}"
            + (f"<br>{html.escape(extra)}" if extra else "")
            + "</figcaption></figure>"
        )
    return "<div class='gallery'>" + "".join(items) + "</div>"


def _figure_width(key: str, n_classes: int, n_models: int) -> str:
    """Single-panel curves side by side; multi-panel figures across the page."""
    single = n_classes == 2 and n_models <= figures.MAX_CURVES
    return "small" if key in ("roc", "pr", "calibration") and single else "wide"


def _html(settings, task, classes, inputs, written, plain, metric_table, entries) -> str:
    decimals = int(settings["decimals"])
    notes = "".join(paragraph(n) for n in _notes(task, inputs))
    performance = (
        paragraph(
            "Methods as rows, metrics as columns; best in bold, second underlined; "
            "each value with its interval."
        )  # fmt: skip
        + f"<div class='scroll'>{tables.to_html(metric_table, decimals=decimals)}</div>"
        + notes
    )
    sections = [Section("performance", "Performance", performance)]
    figure_html = "".join(
        figure_block(
            path,
            alt=key,
            caption=caption,
            css_class=_figure_width(key, len(classes), len(inputs.predictions)),
        )
        for key, (path, caption) in written.figures.items()
        if key != "qc_gallery"
    )
    if figure_html:
        sections.append(Section("figures", "Figures", f"<div class='figures'>{figure_html}</div>"))
    for name, (frame, title, description) in plain.items():
        body = tables.frame_to_html(frame) if not frame.empty else paragraph("none")
        sections.append(
            Section(name, title, paragraph(description) + f"<div class='scroll'>{body}</div>")
        )
    if entries:
        sections.append(
            Section("qc", "QC gallery", _gallery_html(entries, int(settings["thumbnail_px"])))
        )
    n = len(inputs.cohort)
    subtitle = f"Task: {task}; {n} patients in the cohort table; {len(metric_table.models)} models."
    return render_page(title=settings["title"], sections=sections, subtitle=subtitle)

"""The report: tables (bold best, underlined second, intervals), figures and the HTML page,
rendered from a small fake ``results/`` tree."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lungfusion.report import tables  # noqa: E402
from lungfusion.report.build import build_report  # noqa: E402
from lungfusion.report.cohort import redact  # noqa: E402

CLASSES = ["ADC", "SQC"]
SECRET_UID = "1.2.840.99999.4242.1.7"
SECRET_NAME = "DOE^JANE"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _long(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model", "metric", "value", "ci_low", "ci_high"])


# ------------------------------------------------------------------------------- tables


def test_table_marks_best_bold_and_second_underlined():
    long = _long(
        [
            ("ct", "auroc", 0.70, 0.60, 0.80),
            ("ct", "ibs", 0.20, 0.15, 0.25),
            ("pet", "auroc", 0.80, 0.70, 0.90),
            ("pet", "ibs", 0.10, 0.05, 0.15),
            ("late_logistic", "auroc", 0.75, 0.65, 0.85),
            ("late_logistic", "ibs", 0.30, 0.2, 0.4),
        ]  # fmt: skip
    )
    table = tables.build_table(long, metrics=["auroc", "ibs"])
    assert [table.cell(m, "auroc").rank for m in ("ct", "pet", "late_logistic")] == [None, 1, 2]
    # IBS: smaller is better
    assert [table.cell(m, "ibs").rank for m in ("ct", "pet", "late_logistic")] == [2, 1, None]

    latex = tables.to_latex(table, decimals=3)
    assert r"\textbf{0.800} (0.700--0.900)" in latex
    assert r"\underline{0.750} (0.650--0.850)" in latex
    assert "0.700 (0.600--0.800)" in latex and r"\textbf{0.700}" not in latex
    assert r"late\_logistic" in latex and r"\toprule" in latex
    assert r"\textbf{0.100} (0.050--0.150)" in latex  # best IBS is the smallest

    markdown = tables.to_markdown(table, decimals=2)
    assert "| Method | AUROC | IBS |" in markdown
    assert "**0.80** (0.70-0.90)" in markdown
    assert "<u>0.75</u> (0.65-0.85)" in markdown
    row_ct = next(line for line in markdown.splitlines() if line.startswith("| ct "))
    assert "**" not in row_ct.split("|")[2] and "<u>" not in row_ct.split("|")[2]

    frame = tables.to_frame(table, decimals=3)
    assert list(frame.columns) == ["model", "AUROC", "IBS"]
    assert frame.loc[frame.model == "pet", "AUROC"].item() == "0.800 (0.700-0.900)"


def test_table_ties_share_the_mark_and_nan_is_unranked():
    long = _long(
        [("a", "auroc", 0.8, 0.7, 0.9), ("b", "auroc", 0.8, 0.7, 0.9),
         ("c", "auroc", 0.6, np.nan, np.nan), ("d", "auroc", np.nan, np.nan, np.nan)]
    )  # fmt: skip
    table = tables.build_table(long, metrics=["auroc"])
    assert [table.cell(m, "auroc").rank for m in "abcd"] == [1, 1, 2, None]
    markdown = tables.to_markdown(table)
    assert "<u>0.600</u> |" in markdown  # no interval: the value alone
    assert "| d | n/a |" in markdown


def test_external_table_puts_each_models_external_result_beside_its_internal_one():
    internal = _long([("ct", "auroc", 0.8, 0.7, 0.9), ("pet", "auroc", 0.7, 0.6, 0.8)])
    external = _long([("ct", "auroc", 0.65, 0.5, 0.8), ("ct", "n", 6, np.nan, np.nan)])
    frame = tables.external_frame(internal, external, metric="auroc")
    assert frame.to_dict("records") == [
        {
            "model": "ct",
            "internal AUROC": "0.800 (0.700-0.900)",
            "external AUROC": "0.650 (0.500-0.800)",
            "external n": "6",
        }
    ]


def test_header_and_default_columns():
    assert tables.header("auroc_macro") == "AUROC (macro)"
    assert tables.header("auc_365d") == "t-AUC 365 d"
    survival = _long(
        [("m", k, 0.5, 0.4, 0.6) for k in ("n", "c_harrell", "auc_365d", "ibs", "c_uno")]
    )
    assert tables.default_metrics(survival, task="survival") == [
        "c_harrell",
        "c_uno",
        "auc_365d",
        "ibs",
    ]
    multi = _long(
        [("m", k, 0.5, 0.4, 0.6) for k in ("auroc_ADC", "auroc_macro", "accuracy", "f1_macro")]
    )
    assert tables.default_metrics(multi, task="classification") == [
        "auroc_macro",
        "accuracy",
        "f1_macro",
    ]


def test_redact_removes_uids():
    assert redact(f"override series {SECRET_UID} not found") == "override series [UID] not found"
    assert redact("lung volume 120.5 mL") == "lung volume 120.5 mL"


# ----------------------------------------------------------------------- fake results tree


def _qc_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(3, 2))
    axis.imshow(np.random.default_rng(seed).random((16, 24)), cmap="gray")
    figure.savefig(path)
    plt.close(figure)


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def make_fake_results(
    root: Path, *, task: str = "classification", n: int = 12, models: list[str] | None = None
) -> Path:
    """A small results/ tree as the pipeline's stages would leave it."""
    results = root / "results"
    rng = np.random.default_rng(0)
    pids = [f"P{i:03d}" for i in range(n)]
    labels = ["SQC" if i % 2 else "ADC" for i in range(n)]
    excluded = pids[-1]
    default = ["ct", "pet", "late_logistic"] if task == "classification" else ["ct", "late_cox"]
    models = models or default
    kept = [p for p in pids if p != excluded]
    # predictions
    for m_index, model in enumerate(models):
        frames = []
        for fold in (0, 1):
            rows = []
            for i, pid in enumerate(kept):
                if i % 2 != fold:
                    continue
                y = labels[i] == "SQC"
                if task == "classification":
                    p = float(
                        np.clip(
                            0.5 + (0.15 + 0.1 * m_index) * (1 if y else -1) + rng.normal(0, 0.2),
                            0.01,
                            0.99,
                        )
                    )
                    rows.append({"patient_id": pid, "fold": fold, "label": labels[i],
                                 "prob_ADC": 1 - p, "prob_SQC": p})  # fmt: skip
                else:
                    rows.append({"patient_id": pid, "fold": fold, "risk": rng.normal(),
                                 "survival_days": 100 + 30 * i, "event": i % 3 != 0})  # fmt: skip
            frames.append(pd.DataFrame(rows))
        if model.startswith("late"):
            folder = results / "integrate" / model
            folder.mkdir(parents=True, exist_ok=True)
            pd.concat(frames).assign(pattern="ct+pet").to_csv(
                folder / "predictions.tsv", sep="\t", index=False
            )
            _write_json(folder / "summary.json", {"pattern_counts": {"ct+pet": 9, "ct": 2}})
        else:
            for fold, frame in enumerate(frames):
                folder = results / "train" / model / f"fold{fold}"
                folder.mkdir(parents=True, exist_ok=True)
                frame.to_csv(folder / "predictions.tsv", sep="\t", index=False)
    # metrics
    rows = []
    for m_index, model in enumerate(models):
        if task == "classification":
            for metric in tables.BINARY_COLUMNS:
                value = min(0.6 + 0.1 * m_index, 0.95)
                rows.append(
                    (
                        model,
                        metric,
                        value,
                        value - 0.1,
                        value + 0.1,
                        0.04 if m_index < 2 else np.nan,
                    )
                )
        else:
            for metric, value in (("c_harrell", 0.6 + 0.05 * m_index), ("c_uno", 0.58), ("ibs", 0.2 - 0.02 * m_index),
                                  ("logrank_p", 0.03)):  # fmt: skip
                rows.append((model, metric, value, value - 0.05, value + 0.05, np.nan))
            km = pd.DataFrame({"group": ["high"] * 3 + ["low"] * 3, "time": [0, 50, 120, 0, 80, 200],
                               "survival": [1, 0.6, 0.3, 1, 0.9, 0.7], "n_at_start": [5] * 3 + [6] * 3})  # fmt: skip
            (results / "metrics").mkdir(parents=True, exist_ok=True)
            km.to_csv(results / "metrics" / f"{model}_km.tsv", sep="\t", index=False)
    metrics = pd.DataFrame(
        rows, columns=["model", "metric", "value", "ci_low", "ci_high", "p_delong_vs_best"]
    )
    (results / "metrics").mkdir(parents=True, exist_ok=True)
    metrics.to_csv(results / "metrics" / "all.tsv", sep="\t", index=False)
    per_fold = {
        "0": {"threshold": 0.5, "source": "fixed"},
        "1": {"threshold": 0.5, "source": "fixed"},
    }
    _write_json(
        results / "metrics" / "summary.json",
        {"task": task, "confidence_intervals": "95% percentile intervals of 100 stratified bootstrap resamples (seed 0)",
         "pooling": "test predictions of all outer folds pooled",
         "models": {m: {"threshold": {"rule": "SQC when prob_SQC >= cut; cut fixed at 0.5", "per_fold": per_fold}} for m in models}},
    )  # fmt: skip
    # cohort and sidecars
    cohort = pd.DataFrame(
        {"patient_id": pids, "label": labels, "included": ["yes"] * (n - 1) + ["no"],
         "excluded_at": [""] * (n - 1) + ["ingest"],
         "reason": [""] * (n - 1) + [f"ingest failed: no usable CT ({SECRET_UID} is a localizer)"],
         "roi_status": ["ok"] * (n - 1) + ["failed"], "has_ct": [True] * (n - 1) + [False],
         "has_pet": [i % 4 != 0 for i in range(n - 1)] + [False]}
    )  # fmt: skip
    (results / "splits").mkdir(parents=True, exist_ok=True)
    cohort.to_csv(results / "splits" / "cohort.tsv", sep="\t", index=False)
    for i, pid in enumerate(pids):
        ok = pid != excluded
        _write_json(results / "ingest" / pid / "ingest.json",
                    {"status": "ok" if ok else "failed", "patient_name": SECRET_NAME,
                     "ct": {"series_uid": SECRET_UID}})  # fmt: skip
        if not ok:
            _write_json(results / "register" / pid / "register.json",
                        {"status": "skipped", "upstream": {"stage": "ingest", "status": "failed", "message": "no usable CT"}})  # fmt: skip
            _write_json(
                results / "roi" / f"{pid}.json", {"status": "skipped", "reason": "ingest failed"}
            )
            continue
        has_pet = i % 4 != 0
        registration = {"method": "rigid", "kept": i % 3 != 0, "metric_before": -0.31, "metric_after": -0.35,
                        "relative_improvement": 0.129, "translation_mm": 1.2, "rotation_deg": 0.4,
                        "warnings": [], "timings_s": {"total": 1.1}}  # fmt: skip
        _write_json(results / "register" / pid / "register.json",
                    {"status": "ok", "has_pet": has_pet, "registration": registration if has_pet else None,
                     "timings_s": {"read": 0.1, "register": 1.2}, "warnings": []})  # fmt: skip
        _write_json(
            results / "segment" / pid / "segment.json",
            {"status": "ok", "volumes_ml": {"total_ml": 4200.0 + i}},
        )
        _write_json(results / "roi" / f"{pid}.json",
                    {"status": "ok", "has_pet": has_pet, "crop_used": "pet_hotspot", "warnings": []})  # fmt: skip
        _qc_png(results / "roi" / f"{pid}.png", i)
    return results


@pytest.fixture(scope="module")
def classification_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    results = make_fake_results(root)
    build_report(results, results / "report", task="classification", classes=CLASSES)
    return results / "report"


def test_report_writes_every_output(classification_report: Path):
    out = classification_report
    for name in ("roc", "pr", "calibration", "confusion", "qc_gallery"):
        data = (out / "figures" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC), name
    for name in ("metrics", "cohort", "exclusions", "registration", "fusion_patterns"):
        for suffix in (".csv", ".tex", ".md"):
            assert (out / "tables" / f"{name}{suffix}").is_file(), name + suffix
    metrics = pd.read_csv(out / "tables" / "metrics.csv")
    assert list(metrics.model) == ["ct", "pet", "late_logistic"]
    assert metrics.loc[2, "AUROC"] == "0.800 (0.700-0.900)"
    assert (
        metrics.loc[0, "DeLong p vs best"] == "0.040"
        and metrics.loc[2, "DeLong p vs best"] == "best"
    )
    latex = (out / "tables" / "metrics.tex").read_text()
    assert (
        r"\textbf{0.800} (0.700--0.900)" in latex and r"\underline{0.700} (0.600--0.800)" in latex
    )
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


def test_report_cohort_and_registration_tables(classification_report: Path):
    cohort = pd.read_csv(classification_report / "tables" / "cohort.csv")
    total = cohort[cohort["class"] == "all"].iloc[0]
    assert (total.patients, total.included, total.excluded) == (12, 11, 1)
    assert total["CT+PET"] + total["CT only"] == 11 and total["CT only"] == 3
    assert list(cohort["class"]) == ["ADC", "SQC", "all"]
    exclusions = pd.read_csv(classification_report / "tables" / "exclusions.csv")
    assert list(exclusions.patient_id) == ["P011"] and "[UID]" in exclusions.reason[0]
    assert exclusions.excluded_at[0] == "ingest"
    registration = pd.read_csv(classification_report / "tables" / "registration.csv")
    assert len(registration) == 12
    row = registration.set_index("patient_id").loc["P001"]
    assert (row.metric_before, row.metric_after, row.kept, row.register_s) == (
        -0.31,
        -0.35,
        "yes",
        1.2,
    )
    assert registration.set_index("patient_id").loc["P000", "note"] == "no PET: nothing to register"
    assert registration.set_index("patient_id").loc["P011", "status"] == "skipped"
    assert registration.set_index("patient_id").loc["P011", "note"] == "ingest failed: no usable CT"


def test_report_html_is_self_contained_and_has_no_phi(classification_report: Path):
    page = (classification_report / "index.html").read_text()
    assert "<table class='metrics'>" in page and "AUROC" in page and "late_logistic" in page
    sources = re.findall(r"<img[^>]*src='([^']+)'", page)
    assert len(sources) >= 4 + 11  # four figures and the eleven QC thumbnails
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page), "external asset referenced"
    for path in [classification_report / "index.html", *classification_report.rglob("*.md"),
                 *classification_report.rglob("*.csv"), *classification_report.rglob("*.tex")]:  # fmt: skip
        text = path.read_text()
        assert SECRET_UID not in text and SECRET_NAME not in text, path
    markdown = (classification_report / "report.md").read_text()
    assert "![roc](figures/roc.png)" in markdown and "**0.800**" in markdown


def test_survival_report_draws_kaplan_meier(tmp_path: Path):
    results = make_fake_results(tmp_path, task="survival")
    build_report(results, tmp_path / "out", task="survival", classes=CLASSES)
    assert (tmp_path / "out" / "figures" / "km.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "out" / "figures" / "roc.png").exists()
    metrics = pd.read_csv(tmp_path / "out" / "tables" / "metrics.csv")
    assert list(metrics.columns) == ["model", "C (Harrell)", "C (Uno)", "IBS", "log-rank p"]
    markdown = (tmp_path / "out" / "tables" / "metrics.md").read_text()
    assert "**0.650** (0.600-0.700)" in markdown and "**0.180**" in markdown


def test_report_command_and_no_torch(tmp_path: Path):
    """The CLI writes index.html, and the report layer never imports torch."""
    results = make_fake_results(tmp_path)
    params = json.dumps({"task": "classification", "cohort": {"classes": CLASSES}})
    code = (
        "import sys; from lungfusion.cli import main; "
        f"rc = main(['--params', {params!r}, 'report', '--results', {str(results)!r}]); "
        "assert 'torch' not in sys.modules, 'report imported torch'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (results / "report" / "index.html").is_file()
    assert "**0.800** (0.700-0.900)" in (results / "report" / "tables" / "metrics.md").read_text()


def test_a_one_class_model_is_flagged_in_every_table_format():
    from lungfusion.report import tables

    long = pd.DataFrame(
        {"model": ["ct", "ct", "pet", "pet"], "metric": ["auroc", "predicted_classes"] * 2,
         "value": [0.7, 2.0, 0.6, 1.0], "ci_low": [0.6, None, 0.5, None],
         "ci_high": [0.8, None, 0.7, None]}
    )  # fmt: skip
    table = tables.build_table(long, metrics=["auroc"])
    assert table.one_class == {"pet"}
    frame = tables.to_frame(table)
    assert list(frame.model) == ["ct", f"pet {tables.ONE_CLASS_MARK}"]
    for text in (tables.to_markdown(table), tables.to_html(table), tables.to_latex(table)):
        assert f"pet {tables.ONE_CLASS_MARK}" in text and f"ct {tables.ONE_CLASS_MARK}" not in text


def test_report_compares_sfsa_with_exhaustive_search_when_it_ran(tmp_path: Path):
    """The section appears with one row per fold whose best.json has an exhaustive record."""
    results = make_fake_results(tmp_path)
    exhaustive = {"greedy_label": "1+2", "rank": 3, "n_subsets": 16, "val_loss_gap": 0.0123456,
                  "best_label": "0+2", "greedy_val_loss": 0.7, "best_val_loss": 0.6876544}  # fmt: skip
    _write_json(results / "sfsa" / "fold0" / "best.json", {"fold": 0, "label": "1+2"})
    _write_json(
        results / "sfsa" / "fold1" / "best.json",
        {"fold": 1, "label": "1+2", "exhaustive": exhaustive},
    )
    build_report(results, tmp_path / "out", task="classification", classes=CLASSES)
    table = pd.read_csv(tmp_path / "out" / "tables" / "sfsa_exhaustive.csv", dtype=str)
    assert table.to_dict("records") == [
        {"fold": "1", "greedy choice": "1+2", "rank": "3 of 16", "gap to the best": "0.0123",
         "best subset": "0+2"}
    ]  # fmt: skip
    page = (tmp_path / "out" / "index.html").read_text()
    assert "SFSA against exhaustive search" in page and "3 of 16" in page
    assert "## SFSA against exhaustive search" in (tmp_path / "out" / "report.md").read_text()


def test_report_has_no_exhaustive_section_without_records(classification_report: Path):
    assert "SFSA against exhaustive" not in (classification_report / "index.html").read_text()
    assert not (classification_report / "tables" / "sfsa_exhaustive.csv").exists()


def test_report_says_how_each_network_started_and_whether_pretraining_saw_the_test_patients(
    tmp_path: Path,
):
    results = make_fake_results(tmp_path)
    spec = {"arch": "resnet10", "widths": [16, 32, 64, 128]}
    for fold in (0, 1):
        _write_json(results / "train" / "early" / f"fold{fold}" / "summary.json", {
            "epochs_run": 3, "settings": {"freeze_encoder_epochs": -1, "encoder_lr_factor": 0.1},
            "init": {"mode": "pretrain", "encoder": spec, "loaded": {"ct+pet": {}}},
            "aux_targets": {"features": ["sem_log_volume_ml"]},
        })  # fmt: skip
        _write_json(results / "train" / "ct" / f"fold{fold}" / "summary.json", {
            "epochs_run": 2, "settings": {}, "init": {"mode": "scratch", "encoder": None,
                                                     "loaded": {}}, "aux_targets": {},
        })  # fmt: skip
    _write_json(
        results / "pretrain" / "ct" / "fold0" / "summary.json",
        {"transductive": True, "objective": "descriptors"},
    )
    build_report(results, tmp_path / "out", task="classification", classes=CLASSES)
    table = pd.read_csv(tmp_path / "out" / "tables" / "networks.csv", dtype=str)
    rows = {r["model"]: r for r in table.to_dict("records")}
    assert rows["early"]["initialisation"] == "pretrain (ct+pet)"
    assert rows["early"]["encoder"] == "resnet10" and rows["early"]["frozen epochs"] == "all"
    assert rows["early"]["auxiliary targets"] == "sem_log_volume_ml"
    assert rows["ct"]["initialisation"] == "scratch" and rows["ct"]["encoder"] == "native"
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Pretraining was transductive" in page
    assert "Pretraining objective: descriptors." in page

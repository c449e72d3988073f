"""The clinical table as model input: parse the collections' spellings, then impute and scale.

Parsing turns each sheet column (text, as ``read_sample_sheet`` reads it) into a number with NaN
for "unknown", so every collection ends up in one vocabulary:

* ``sex``: M/F, male/female (any case) -> ``male`` 1/0.
* ``age``: "64", "64.5", "064Y" (DICOM AS; M/W/D units converted to years) -> years.
* ``weight_kg``: "72", "72 kg", "72,5" -> kg.
* ``t_stage`` / ``n_stage`` / ``m_stage``: "1a", "T2a", "N1", "M1b", "is", "x", "Tx", blanks, and
  Lung-PET-CT-Dx's full-width digits -> an ordinal number (the main category: Tis = 0, T1a = 1,
  T2b = 2, ...). Unknown (x, blank, NA) is NaN. NSCLC-Radiomics writes T as 1-5 where 5 is not
  an AJCC T category: it is read as Tx (unknown); likewise N above 3 and M above 1.
* ``overall_stage``: I, IA, II, IIIa, IIIb, IV (roman or arabic) -> 1..4.
* ``smoking``: never / non-smoker / no; former / ex-smoker / quit; current / active; yes /
  smoker / ever (a smoker of unknown status) -> ``smoker`` (ever 1 / never 0) and
  ``current_smoker`` (1 / 0, NaN when only "ever" is known). A number in the smoking column is
  read as pack-years (0 = never).
* ``pack_years``: "40", "40 pack-years", "40 PY" -> number.
* ``histology``: adenocarcinoma -> ADC, squamous cell carcinoma -> SQC, large cell -> LCC,
  small cell -> SCLC, nos -> NOS. It is the label in a subtype study, so it is never a feature
  unless asked for.

Preprocessing (:func:`fit_preprocessor`) is a scikit-learn ``ColumnTransformer``: continuous and
ordinal columns are median-imputed and z-scored, binary ones mode-imputed and kept 0/1,
categorical ones (histology, if asked) mode-imputed and one-hot encoded. It is fit on a fold's
training patients only; held-out patients are only transformed.

>>> sheet = pd.DataFrame({"patient_id": ["a", "b", "c"], "sex": ["M", "female", None],
...                       "age": ["64", "070Y", ""], "t_stage": ["1a", "T2b", "is"]})
>>> parse_clinical_table(sheet)[["male", "age", "t_stage"]].to_numpy().tolist()
[[1.0, 64.0, 1.0], [0.0, 70.0, 2.0], [nan, nan, 0.0]]
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

# Parsed feature columns, by how they are preprocessed.
CONTINUOUS = ("age", "weight_kg", "pack_years", "t_stage", "n_stage", "m_stage", "overall_stage")
BINARY = ("male", "smoker", "current_smoker")
CATEGORICAL = ("histology",)
FEATURES = CONTINUOUS + BINARY + CATEGORICAL
# What a model gets by default: everything but histology (the label of a subtype study).
DEFAULT_FEATURES = CONTINUOUS + BINARY

# Sheet column (our names, see lungfusion.samplesheet) -> parsed feature columns it yields.
SOURCES = {
    "age": ("age",),
    "sex": ("male",),
    "weight_kg": ("weight_kg",),
    "pack_years": ("pack_years",),
    "smoking": ("smoker", "current_smoker", "pack_years"),
    "t_stage": ("t_stage",),
    "n_stage": ("n_stage",),
    "m_stage": ("m_stage",),
    "overall_stage": ("overall_stage",),
    "histology": ("histology",),
}
STAGE_LIMITS = {"T": 4, "N": 3, "M": 1}  # highest AJCC category; above it reads as unknown (x)
MISSING_WORDS = {"", "na", "n/a", "nan", "none", "null", "unknown", "unk", "?", "-", "--", "x"}
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4}
_SMOKING_WORDS = {
    "never": ("never", "non-smoker", "nonsmoker", "non smoker", "no", "never smoked", "n"),
    "former": ("former", "ex", "ex-smoker", "exsmoker", "ex smoker", "quit", "past", "previous",
               "former smoker", "stopped"),
    "current": ("current", "active", "current smoker", "smoking", "still smoking"),
    "ever": ("yes", "y", "smoker", "ever", "ever smoker", "smoked"),
}  # fmt: skip
_HISTOLOGY = (
    ("squamous", "SQC"),
    ("adeno", "ADC"),
    ("large", "LCC"),
    ("small", "SCLC"),
    ("nos", "NOS"),
    ("not otherwise", "NOS"),
)


# ------------------------------------------------------------------------------- parsing


def _text(value) -> str:
    """NFKC-normalised, stripped, lower-case text ('' for missing); full-width 'Ｍ１' -> 'm1'."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return unicodedata.normalize("NFKC", str(value)).strip().casefold()


def _is_missing(text: str) -> bool:
    return text in MISSING_WORDS


def parse_number(value) -> float:
    """The first number in ``value`` ('72 kg' -> 72.0, '72,5' -> 72.5); NaN if none."""
    text = _text(value)
    match = _NUMBER.search(text)
    if _is_missing(text) or match is None:
        return math.nan
    return float(match.group().replace(",", "."))


def parse_age(value) -> float:
    """Age in years; DICOM age strings ('064Y', '006M', '010W', '100D') are converted."""
    text = _text(value)
    years = parse_number(text)
    if math.isnan(years):
        return math.nan
    unit = re.fullmatch(r"0*\d+(?:\.\d+)?\s*([ymwd])", text)
    divisor = {"y": 1.0, "m": 12.0, "w": 52.1775, "d": 365.25}[unit.group(1)] if unit else 1.0
    return years / divisor


def parse_sex(value) -> float:
    """1.0 for male, 0.0 for female, NaN otherwise."""
    text = _text(value)
    if text in {"m", "male", "man", "1"}:
        return 1.0
    if text in {"f", "female", "woman", "w", "0"}:
        return 0.0
    return math.nan


def parse_stage(value, letter: str) -> float:
    """The main TNM category as a number: 'T2a' / '2a' -> 2, 'is' -> 0, 'x' / '' / 'NA' -> NaN.

    ``letter`` is T, N or M; a value above the highest AJCC category (T4, N3, M1), such as
    NSCLC-Radiomics' T 5, is read as unknown (x).
    """
    letter = letter.upper()
    if letter not in STAGE_LIMITS:
        raise ValueError(f"letter must be T, N or M, got {letter!r}")
    text = _text(value)
    text = re.sub(rf"^(?:[cpy]?){letter.lower()}\s*", "", text)  # 'T2a', 'cT2', 'pN1' -> '2a'
    if text in {"is", "cis", "0is"}:
        return 0.0
    if _is_missing(text):
        return math.nan
    match = re.fullmatch(r"(\d+)(?:\.0+)?\s*[a-d]?\d?", text)
    if match is None:
        return math.nan
    category = int(match.group(1))
    return float(category) if category <= STAGE_LIMITS[letter] else math.nan


def parse_overall_stage(value) -> float:
    """Overall stage I-IV (roman with an optional A/B/C, or arabic) -> 1..4; NaN otherwise."""
    text = _text(value)
    text = re.sub(r"^stage\s*", "", text)
    match = re.fullmatch(r"(iv|iii|ii|i|[1-4])\s*[abc]?\d?", text)
    if match is None:
        return math.nan
    token = match.group(1)
    return float(_ROMAN.get(token, token))


def parse_smoking(value) -> tuple[float, float, float]:
    """(smoker, current_smoker, pack_years) from a smoking-history value; NaN where unknown."""
    text = _text(value)
    if _is_missing(text):
        return math.nan, math.nan, math.nan
    text = text.replace("_", " ")
    for status, words in _SMOKING_WORDS.items():
        if text in words:
            return _smoking_flags(status) + (0.0 if status == "never" else math.nan,)
    for status in ("never", "former", "current"):  # longer phrases: 'ex-smoker, 30 py'
        if any(word in text for word in _SMOKING_WORDS[status] if len(word) > 3):
            pack_years = 0.0 if status == "never" else _pack_years_in(text)
            return _smoking_flags(status) + (pack_years,)
    number = parse_number(text)
    if not math.isnan(number):  # a bare number in the smoking column: pack-years
        return (1.0, math.nan, number) if number > 0 else (0.0, 0.0, 0.0)
    return math.nan, math.nan, math.nan


def _smoking_flags(status: str) -> tuple[float, float]:
    return {
        "never": (0.0, 0.0),
        "former": (1.0, 0.0),
        "current": (1.0, 1.0),
        "ever": (1.0, math.nan),
    }[status]


def _pack_years_in(text: str) -> float:
    match = re.search(r"(\d+(?:[.,]\d+)?)\s*(?:py\b|pack)", text)  # '30 py', '30 pack-years'
    return float(match.group(1).replace(",", ".")) if match else math.nan


def parse_histology(value) -> str | None:
    """'adenocarcinoma' -> 'ADC', 'squamous cell carcinoma' -> 'SQC', 'large cell' -> 'LCC',
    'small cell' -> 'SCLC', 'nos' -> 'NOS'; None when blank or unknown."""
    text = _text(value)
    if _is_missing(text):
        return None
    for word, code in _HISTOLOGY:
        if word in text:
            return code
    return None


def parse_clinical_table(sheet: pd.DataFrame) -> pd.DataFrame:
    """Parsed clinical features of ``sheet`` (our column names), same index.

    Only the columns the sheet has are parsed; every parsed column is float (NaN = unknown)
    except ``histology`` (a code or None).
    """
    out = pd.DataFrame(index=sheet.index)
    columns = set(sheet.columns)
    if "age" in columns:
        out["age"] = sheet["age"].map(parse_age).astype(float)
    if "sex" in columns:
        out["male"] = sheet["sex"].map(parse_sex).astype(float)
    if "weight_kg" in columns:
        out["weight_kg"] = sheet["weight_kg"].map(parse_number).astype(float)
    if "smoking" in columns:
        flags = pd.DataFrame(
            [parse_smoking(v) for v in sheet["smoking"]],
            index=sheet.index,
            columns=["smoker", "current_smoker", "pack_years"],
        )
        out["smoker"], out["current_smoker"] = flags.smoker, flags.current_smoker
        out["pack_years"] = flags.pack_years
    if "pack_years" in columns:
        given = sheet["pack_years"].map(parse_number).astype(float)
        out["pack_years"] = given.fillna(out["pack_years"]) if "pack_years" in out else given
        if "smoker" in out:  # zero pack-years means never smoked
            out["smoker"] = out["smoker"].fillna((given > 0).astype(float).where(given.notna()))
    for letter in "tnm":
        column = f"{letter}_stage"
        if column in columns:
            out[column] = sheet[column].map(lambda v, L=letter: parse_stage(v, L)).astype(float)
    if "overall_stage" in columns:
        out["overall_stage"] = sheet["overall_stage"].map(parse_overall_stage).astype(float)
    if "histology" in columns:
        out["histology"] = sheet["histology"].map(parse_histology).astype(object)
    return out[[c for c in FEATURES if c in out.columns]]


# -------------------------------------------------------------------------- preprocessing


def check_feature_names(columns: Sequence[str] | None) -> tuple[str, ...]:
    """``columns`` checked against :data:`FEATURES`; None gives :data:`DEFAULT_FEATURES`."""
    if columns is None:
        return DEFAULT_FEATURES
    unknown = sorted(set(columns) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown clinical feature(s) {unknown}; known: {list(FEATURES)}")
    return tuple(c for c in FEATURES if c in set(columns))


def fit_preprocessor(
    features: pd.DataFrame, *, columns: Sequence[str] | None = None
) -> ColumnTransformer:
    """A ``ColumnTransformer`` fit on ``features`` (parsed, training patients only).

    Columns with no value among these patients are left out (nothing to impute from).
    """
    wanted = check_feature_names(columns)
    usable = [c for c in wanted if c in features.columns and features[c].notna().any()]
    if not usable:
        raise ValueError(
            f"no clinical column has a value among the training patients (wanted {list(wanted)}, "
            f"the sheet gives {list(features.columns)})"
        )
    groups = {
        "continuous": [c for c in usable if c in CONTINUOUS],
        "binary": [c for c in usable if c in BINARY],
        "categorical": [c for c in usable if c in CATEGORICAL],
    }
    steps = {
        "continuous": lambda: make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
        "binary": lambda: SimpleImputer(strategy="most_frequent"),
        "categorical": lambda: make_pipeline(
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
        ),
    }
    transformer = ColumnTransformer(
        [(name, steps[name](), cols) for name, cols in groups.items() if cols],
        verbose_feature_names_out=False,
    )
    fit = features[usable].copy()
    for column in groups["categorical"]:
        fit[column] = fit[column].astype(object).where(fit[column].notna(), np.nan)
    return transformer.fit(fit)


def transform_features(transformer: ColumnTransformer, features: pd.DataFrame) -> pd.DataFrame:
    """Apply a fitted transformer; float32 columns named as the transformer names them."""
    needed = list(transformer.feature_names_in_)
    frame = features.reindex(columns=needed).copy()
    for column in needed:
        if column in CATEGORICAL:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), np.nan)
        else:
            frame[column] = frame[column].astype(float)
    values = transformer.transform(frame)
    names = [str(n) for n in transformer.get_feature_names_out()]
    return pd.DataFrame(np.asarray(values, dtype=np.float32), index=features.index, columns=names)


def clinical_tabular_features(
    sheet: pd.DataFrame, *, fit_ids: Sequence[str], columns: Sequence[str] | None = None
) -> tuple[pd.DataFrame, ColumnTransformer]:
    """Model-ready clinical features for every patient of ``sheet``, indexed by patient_id,
    with the transformer fit on the ``fit_ids`` patients only; returns (features, transformer)."""
    ids = sheet["patient_id"]
    parsed = parse_clinical_table(sheet.reset_index(drop=True)).set_index(ids.to_numpy())
    parsed.index.name = "patient_id"
    missing = sorted(set(fit_ids) - set(parsed.index))
    if missing:
        raise KeyError(f"training patients missing from the sample sheet: {missing[:5]}")
    transformer = fit_preprocessor(parsed.loc[list(fit_ids)], columns=columns)
    return transform_features(transformer, parsed), transformer


def patient_features(transformer: ColumnTransformer, values: Mapping[str, object]) -> np.ndarray:
    """One new patient's feature vector from raw sheet values (e.g. ``{"age": "64", "sex": "F",
    "t_stage": "2a"}``), with a transformer saved at training; unknown values are imputed."""
    row = pd.DataFrame([dict(values)])
    return np.array(transform_features(transformer, parse_clinical_table(row)).to_numpy()[0])

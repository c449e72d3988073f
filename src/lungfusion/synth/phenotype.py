"""Class-conditional latent phenotype, clinical sheet values, survival, and the Bayes oracle.

Every latent feature is drawn independently given the class (a naive-Bayes generative model), so
the oracle P(class | latents) is exact: prior times the product of the per-feature likelihoods.
The tables below are the documented distributions (docs/synthetic_cohort.md repeats them).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CLASSES = ("ADC", "SQC", "SCLC", "LCC")
SMOKING = ("never", "former", "current")
N_STAGES = (0, 1, 2, 3)
M_STAGES = ("0", "1a", "1b", "1c")
# T stage from the longest diameter in mm (AJCC 8th edition size cut-offs)
T_CUTS_MM = ((10, "1a"), (20, "1b"), (30, "1c"), (40, "2a"), (50, "2b"), (70, "3"))
DIAMETER_RANGE_MM = (8.0, 95.0)
T_STAGES = ("1a", "1b", "1c", "2a", "2b", "3", "4")

# Per class: the parameters of each latent feature's distribution.
CLASS_MODELS: dict[str, dict] = {
    "ADC": {
        "p_central": 0.25,
        "log_diameter": (math.log(24.0), 0.40),  # normal on log(mm)
        "ggo": (3.0, 4.0),  # beta: ground-glass rim width as a fraction of the radius
        "p_cavitation": 0.05,
        "log_suvmax": (math.log(6.0), 0.45),
        "p_necrosis": 0.18,
        "p_concordant": 0.30,  # PET hot spot on the side of the CT solid component
        "n_stage": (0.55, 0.15, 0.20, 0.10),
        "age": (63.0, 9.0),
        "p_male": 0.45,
        "smoking": (0.25, 0.47, 0.28),
        "log_pack_years": (math.log(28.0), 0.5),
        "m_stage": (0.75, 0.10, 0.08, 0.07),
    },
    "SQC": {
        "p_central": 0.50,
        "log_diameter": (math.log(29.0), 0.40),
        "ggo": (2.0, 5.0),
        "p_cavitation": 0.18,
        "log_suvmax": (math.log(7.5), 0.45),
        "p_necrosis": 0.35,
        "p_concordant": 0.75,
        "n_stage": (0.48, 0.18, 0.24, 0.10),
        "age": (67.0, 9.0),
        "p_male": 0.66,
        "smoking": (0.12, 0.50, 0.38),
        "log_pack_years": (math.log(35.0), 0.5),
        "m_stage": (0.80, 0.08, 0.07, 0.05),
    },
    "SCLC": {
        "p_central": 0.80,
        "log_diameter": (math.log(35.0), 0.40),
        "ggo": (1.0, 8.0),
        "p_cavitation": 0.02,
        "log_suvmax": (math.log(11.0), 0.40),
        "p_necrosis": 0.35,
        "p_concordant": 0.55,
        "n_stage": (0.15, 0.15, 0.40, 0.30),
        "age": (66.0, 8.0),
        "p_male": 0.55,
        "smoking": (0.03, 0.37, 0.60),
        "log_pack_years": (math.log(50.0), 0.5),
        "m_stage": (0.45, 0.15, 0.15, 0.25),
    },
    "LCC": {
        "p_central": 0.35,
        "log_diameter": (math.log(42.0), 0.40),
        "ggo": (1.5, 5.0),
        "p_cavitation": 0.12,
        "log_suvmax": (math.log(12.0), 0.45),
        "p_necrosis": 0.50,
        "p_concordant": 0.50,
        "n_stage": (0.40, 0.20, 0.30, 0.10),
        "age": (65.0, 9.0),
        "p_male": 0.65,
        "smoking": (0.08, 0.47, 0.45),
        "log_pack_years": (math.log(40.0), 0.5),
        "m_stage": (0.70, 0.12, 0.08, 0.10),
    },
}

# Which latents each modality shows (the oracle restricted to a modality uses only its own).
IMAGE_LATENTS = (
    "central",
    "diameter_mm",
    "ggo_fraction",
    "cavitation",
    "suvmax",
    "necrosis",
    "concordant",
    "n_stage",
)
CLINICAL_LATENTS = ("age", "sex", "smoking", "pack_years", "t_stage", "n_stage", "m_stage")

# Cox proportional hazards: h(t | x) = h0(t) exp(beta . x), Weibull baseline h0(t) = k/s (t/s)^(k-1)
WEIBULL_SHAPE = 1.2
WEIBULL_SCALE_DAYS = 1400.0
COX_BETA = {
    "t_index": 0.18,  # T stage as 0..6 (1a..4)
    "n_stage": 0.30,
    "metastatic": 0.90,  # m_stage != 0
    "age_per_10y": 0.25,  # (age - 65) / 10
    "log_suvmax": 0.30,  # log(suvmax / 8)
    "male": 0.15,
    "SQC": 0.20,
    "SCLC": 0.80,
    "LCC": 0.40,
}
FOLLOW_UP_DAYS = (365.0, 5 * 365.0)  # administrative censoring, uniform


def t_stage_from_diameter(diameter_mm: float) -> str:
    for cut, stage in T_CUTS_MM:
        if diameter_mm <= cut:
            return stage
    return "4"


def sample_latents(rng: np.random.Generator, label: str) -> dict:
    """Draw one patient's latent phenotype and clinical values given its class."""
    m = CLASS_MODELS[label]
    latents: dict = {"label": label}
    latents["central"] = bool(rng.random() < m["p_central"])
    latents["diameter_mm"] = float(
        np.clip(math.exp(rng.normal(*m["log_diameter"])), *DIAMETER_RANGE_MM)
    )
    latents["ggo_fraction"] = float(rng.beta(*m["ggo"]))
    latents["cavitation"] = bool(rng.random() < m["p_cavitation"])
    latents["suvmax"] = float(math.exp(rng.normal(*m["log_suvmax"])))
    latents["necrosis"] = bool(rng.random() < m["p_necrosis"])
    latents["concordant"] = bool(rng.random() < m["p_concordant"])
    latents["n_stage"] = int(rng.choice(N_STAGES, p=m["n_stage"]))
    latents["age"] = int(round(float(np.clip(rng.normal(*m["age"]), 30, 95))))
    latents["sex"] = "M" if rng.random() < m["p_male"] else "F"
    latents["smoking"] = str(rng.choice(SMOKING, p=m["smoking"]))
    if latents["smoking"] == "never":
        latents["pack_years"] = 0.0
    else:
        latents["pack_years"] = round(float(math.exp(rng.normal(*m["log_pack_years"]))), 1)
    latents["m_stage"] = str(rng.choice(M_STAGES, p=m["m_stage"]))
    latents["t_stage"] = t_stage_from_diameter(latents["diameter_mm"])
    # weight depends on sex only, so it carries no class signal beyond sex
    mean_weight = 80.0 if latents["sex"] == "M" else 66.0
    latents["weight_kg"] = round(float(np.clip(rng.normal(mean_weight, 12.0), 42, 140)), 1)
    return latents


def sample_survival(rng: np.random.Generator, latents: dict) -> tuple[int, int, float]:
    """Survival days, event (1 death, 0 censored) and the linear predictor of the Cox model."""
    lp = linear_predictor(latents)
    u = rng.random()
    # inverse of S(t) = exp(-(t/s)^k exp(lp))
    death = WEIBULL_SCALE_DAYS * (-math.log(1.0 - u) / math.exp(lp)) ** (1.0 / WEIBULL_SHAPE)
    censor = rng.uniform(*FOLLOW_UP_DAYS)
    days = max(1, int(round(min(death, censor))))
    return days, int(death <= censor), lp


def linear_predictor(latents: dict) -> float:
    x = {
        "t_index": T_STAGES.index(latents["t_stage"]),
        "n_stage": latents["n_stage"],
        "metastatic": float(latents["m_stage"] != "0"),
        "age_per_10y": (latents["age"] - 65.0) / 10.0,
        "log_suvmax": math.log(latents["suvmax"] / 8.0),
        "male": float(latents["sex"] == "M"),
        "SQC": float(latents["label"] == "SQC"),
        "SCLC": float(latents["label"] == "SCLC"),
        "LCC": float(latents["label"] == "LCC"),
    }
    return float(sum(COX_BETA[k] * v for k, v in x.items()))


def _bernoulli(p: float, value: bool) -> float:
    return math.log(p if value else 1.0 - p)


def _t_stage_loglik(m: dict, t_stage: str) -> float:
    """log P(T stage | class): the probability mass of log(diameter) within the stage's bin."""
    edges = [DIAMETER_RANGE_MM[0]] + [cut for cut, _ in T_CUTS_MM] + [DIAMETER_RANGE_MM[1]]
    i = T_STAGES.index(t_stage)
    mu, sd = m["log_diameter"]
    # the diameter is clipped to [8, 95] mm, so the outer bins take the clipped tails
    lo = -np.inf if i == 0 else math.log(edges[i])
    hi = np.inf if i == len(T_STAGES) - 1 else math.log(edges[i + 1])
    mass = stats.norm.cdf(hi, mu, sd) - stats.norm.cdf(lo, mu, sd)
    return math.log(max(mass, 1e-300))


def feature_loglik(label: str, name: str, latents: dict) -> float:
    """log p(latent ``name`` | class ``label``) under the generator's distributions."""
    m = CLASS_MODELS[label]
    v = latents[name]
    if name == "central":
        return _bernoulli(m["p_central"], v)
    if name == "diameter_mm":
        mu, sd = m["log_diameter"]
        # the diameter is clipped to [8, 95] mm: the clipped values carry the tail mass
        if v <= DIAMETER_RANGE_MM[0]:
            return float(stats.norm.logcdf(math.log(v), mu, sd))
        if v >= DIAMETER_RANGE_MM[1]:
            return float(stats.norm.logsf(math.log(v), mu, sd))
        return float(stats.norm.logpdf(math.log(v), mu, sd))
    if name == "ggo_fraction":
        return float(stats.beta.logpdf(v, *m["ggo"]))
    if name == "cavitation":
        return _bernoulli(m["p_cavitation"], v)
    if name == "suvmax":
        return float(stats.norm.logpdf(math.log(v), *m["log_suvmax"]))
    if name == "necrosis":
        return _bernoulli(m["p_necrosis"], v)
    if name == "concordant":
        return _bernoulli(m["p_concordant"], v)
    if name == "n_stage":
        return math.log(m["n_stage"][N_STAGES.index(v)])
    if name == "age":
        return float(stats.norm.logpdf(v, *m["age"]))  # rounding to years: same for all classes
    if name == "sex":
        return _bernoulli(m["p_male"], v == "M")
    if name == "smoking":
        return math.log(m["smoking"][SMOKING.index(v)])
    if name == "pack_years":
        if latents["smoking"] == "never":
            return 0.0
        return float(stats.norm.logpdf(math.log(max(v, 0.05)), *m["log_pack_years"]))
    if name == "m_stage":
        return math.log(m["m_stage"][M_STAGES.index(v)])
    if name == "t_stage":
        return _t_stage_loglik(m, v)
    raise KeyError(name)


ORACLE_FEATURES = {
    # the full oracle sees the diameter itself, which makes the T stage redundant
    "full": tuple(dict.fromkeys(IMAGE_LATENTS + CLINICAL_LATENTS[:-3] + ("m_stage",))),
    "image": IMAGE_LATENTS,
    "clinical": CLINICAL_LATENTS,
}


def oracle_probabilities(latents: dict, prior: dict[str, float], features: tuple) -> dict:
    """P(class | the named latents) for every class with a positive prior."""
    classes = [c for c in CLASSES if prior.get(c, 0) > 0]
    logp = np.array(
        [
            math.log(prior[c]) + sum(feature_loglik(c, name, latents) for name in features)
            for c in classes
        ]
    )
    p = np.exp(logp - logp.max())
    p /= p.sum()
    return {c: float(pi) for c, pi in zip(classes, p, strict=True)}

"""Seeded synthetic data for the shipped specs, one generator per domain, so every spec releases
with no download. `data.source: synthetic` is card fraud; `synthetic:<domain>` names another
(the multiclass and regression books are in `synthetic_kinds`).

Each generator draws features whose class-conditional patterns a model can learn (neither trivial
nor noise), and `drift` > 0 shifts the population the way that book's real traffic shifts, with
the labels' mechanism unchanged, so the nightly drift check has something true to find.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from tasks.core.errors import ConveyorError
from tasks.datasets.synthetic_kinds import generate_loss_given_default, generate_merchant_categories

SYNTHETIC = "synthetic"
CARD_FRAUD, CREDIT_DEFAULT, CHURN = "card-fraud", "credit-default", "churn"
MERCHANT_CATEGORY, LOSS_GIVEN_DEFAULT = "merchant-category", "loss-given-default"

Generator = Callable[[int, int, float, float], pd.DataFrame]

# Class-conditional distributions of the synthetic transactions: (legitimate, fraud).
_CHANNEL_P = {
    "legit": {"pos": 0.45, "online": 0.30, "atm": 0.10, "contactless": 0.15},
    "fraud": {"pos": 0.10, "online": 0.70, "atm": 0.12, "contactless": 0.08},
}
# Share of fraud rows whose features are drawn from the legitimate distribution one by one: real
# fraudsters imitate normal behaviour, and without it the problem is trivially separable.
_CAMOUFLAGE = 0.45


def generate_transactions(
    rows: int, seed: int, fraud_rate: float, drift: float = 0.0
) -> pd.DataFrame:
    """Card transactions with a rare fraud class; `drift` > 0 shifts the population (not labels)."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(rows) < fraud_rate

    def mix(legit: np.ndarray, bad: np.ndarray) -> np.ndarray:
        use_bad = fraud & (rng.random(rows) >= _CAMOUFLAGE)
        return np.where(use_bad, bad, legit)

    night = rng.integers(0, 6, rows)
    day = np.clip(np.round(rng.normal(14, 4, rows)), 0, 23).astype(int)
    hour = mix(
        np.where(rng.random(rows) < 0.1, night, day), np.where(rng.random(rows) < 0.6, night, day)
    )

    amount = mix(rng.lognormal(3.6, 1.0, rows), rng.lognormal(5.0, 1.3, rows))
    international = mix(rng.random(rows) < 0.05, rng.random(rows) < 0.35)
    velocity = mix(rng.beta(2, 8, rows), rng.beta(5, 3, rows))
    merchant = mix(rng.beta(2, 6, rows), rng.beta(4, 3, rows))
    age = mix(rng.gamma(2.0, 800.0, rows), rng.gamma(1.2, 150.0, rows))
    count = mix(rng.poisson(3, rows), rng.poisson(9, rows))
    distance = mix(rng.exponential(15.0, rows), rng.exponential(500.0, rows))
    present = mix(rng.random(rows) < 0.6, rng.random(rows) < 0.15)
    names = list(_CHANNEL_P["legit"])
    channel = mix(
        rng.choice(len(names), rows, p=list(_CHANNEL_P["legit"].values())),
        rng.choice(len(names), rows, p=list(_CHANNEL_P["fraud"].values())),
    )

    if drift > 0:
        # Covariate shift of the kind a card book sees after a product launch or an attack wave.
        amount = amount * (1.0 + 0.8 * drift)
        international = international | (rng.random(rows) < 0.15 * drift)
        velocity = np.clip(velocity + 0.15 * drift * rng.random(rows), 0, 1)
        to_online = rng.random(rows) < 0.35 * min(drift, 1.0)
        channel = np.where(to_online, names.index("online"), channel)
        hour = np.where(rng.random(rows) < 0.2 * min(drift, 1.0), rng.integers(0, 6, rows), hour)

    return pd.DataFrame(
        {
            "amount": np.round(np.clip(amount, 0.5, 50_000.0), 2),
            "hour_of_day": hour.astype("int64"),
            "is_international": international.astype(bool),
            "velocity_score": np.round(velocity, 4),
            "merchant_risk_score": np.round(merchant, 4),
            "account_age_days": np.clip(age, 0, 20_000).astype("int64"),
            "txn_count_24h": np.clip(count, 0, 500).astype("int64"),
            "distance_from_home_km": np.round(np.clip(distance, 0, 20_000.0), 1),
            "card_present": present.astype(bool),
            "channel": pd.Categorical.from_codes(channel, categories=names).astype(str),
            "is_fraud": fraud.astype("int64"),
        }
    )


def _with_rate(rng: np.random.Generator, risk: np.ndarray, positive_rate: float) -> np.ndarray:
    """Labels drawn from sigmoid(risk + b), with b chosen so that the mean probability is
    `positive_rate`: the spec states the base rate, the risk score its shape."""
    low, high = -30.0, 30.0
    for _ in range(60):  # bisection: the mean of a sigmoid is monotone in its offset
        mid = (low + high) / 2
        if (1 / (1 + np.exp(-(risk + mid)))).mean() < positive_rate:
            low = mid
        else:
            high = mid
    return rng.random(len(risk)) < 1 / (1 + np.exp(-(risk + low)))


EMPLOYMENT = ["salaried", "self_employed", "unemployed", "retired"]
HOME = ["rent", "own", "mortgage"]
PURPOSE = ["car", "home_improvement", "education", "debt_consolidation", "other"]


AGE_BANDS = ["18-29", "30-44", "45-64", "65+"]


def generate_credit(
    rows: int, seed: int, positive_rate: float, drift: float = 0.0, bias: float = 0.0
) -> pd.DataFrame:
    """Consumer loan applications; the target is default within 12 months. Non-linear effects
    (debt-to-income and utilisation interact) suit a gradient-boosted model; `income` and
    `revolving_utilization` have nulls (not declared, no revolving line), more often where the
    risk is higher, as in real bureau data. `age_band` is evaluation-only (see `_age_bands`)."""
    rng = np.random.default_rng(seed)
    employment = rng.choice(len(EMPLOYMENT), rows, p=[0.62, 0.2, 0.06, 0.12])
    home = rng.choice(len(HOME), rows, p=[0.4, 0.2, 0.4])
    purpose = rng.choice(len(PURPOSE), rows, p=[0.25, 0.15, 0.1, 0.35, 0.15])
    income = rng.lognormal(10.8, 0.5, rows) * np.where(employment == 2, 0.35, 1.0)
    loan = income * rng.uniform(0.05, 0.6, rows)
    dti = rng.gamma(2.0, 0.15, rows)
    history = rng.gamma(3.0, 40.0, rows)
    accounts = rng.poisson(6, rows)
    delinquencies = rng.poisson(0.3, rows)
    utilization = rng.beta(2, 4, rows)
    cosigner = rng.random(rows) < 0.1
    if drift > 0:
        # A downturn: incomes fall, borrowing against them rises, more consolidation loans.
        income = income * (1 - 0.25 * min(drift, 1.0))
        dti = dti + 0.25 * drift * rng.random(rows)
        utilization = np.clip(utilization + 0.2 * drift * rng.random(rows), 0, 1)
        to_consolidation = rng.random(rows) < 0.3 * min(drift, 1.0)
        purpose = np.where(to_consolidation, PURPOSE.index("debt_consolidation"), purpose)
    risk = (
        2.0 * np.minimum(dti, 1.5)
        + 1.6 * utilization
        + 2.0 * (dti > 0.5) * (utilization > 0.6)
        + 0.6 * np.minimum(delinquencies, 4)
        - 0.005 * np.minimum(history, 300)
        - 0.5 * np.log(income / 50_000)
        + 0.8 * (loan / income)
        + np.array([0.0, 0.4, 1.2, -0.2])[employment]
        + np.array([0.3, -0.3, 0.0])[home]
        + np.array([0.0, -0.2, 0.2, 0.5, 0.3])[purpose]
        - 0.7 * cosigner
    )
    # Scaled so that a good model reaches a ROC AUC near 0.85: bureau data is noisy, not random.
    defaulted = _with_rate(rng, 1.8 * risk, positive_rate)
    income_missing = rng.random(rows) < np.where(employment == 1, 0.15, 0.03)
    utilization = np.where(rng.random(rows) < 0.04, np.nan, np.round(utilization, 3))
    band, defaulted = _age_bands(seed, np.clip(history, 0, 600).astype("int64"), defaulted, bias)
    return pd.DataFrame(
        {
            "annual_income": np.where(income_missing, np.nan, np.round(income, 0)),
            "loan_amount": np.round(np.clip(loan, 500.0, 500_000.0), 0),
            "debt_to_income": np.round(np.clip(dti, 0, 3.0), 3),
            "credit_history_months": np.clip(history, 0, 600).astype("int64"),
            "open_accounts": np.clip(accounts, 0, 60).astype("int64"),
            "delinquencies_2y": np.clip(delinquencies, 0, 20).astype("int64"),
            "revolving_utilization": utilization,
            "has_cosigner": cosigner.astype(bool),
            "employment_type": pd.Categorical.from_codes(employment, EMPLOYMENT).astype(str),
            "home_ownership": pd.Categorical.from_codes(home, HOME).astype(str),
            "loan_purpose": pd.Categorical.from_codes(purpose, PURPOSE).astype(str),
            "age_band": pd.Categorical.from_codes(band, AGE_BANDS).astype(str),
            "defaulted": defaulted.astype("int64"),
        }
    )


def _age_bands(
    seed: int, history_months: np.ndarray, defaulted: np.ndarray, bias: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each applicant's age band, and the labels with `bias` applied.

    Age is a protected attribute for credit (never a model input), but a short credit history
    says much of it: most applicants under 30 have less than four years of history. With
    `bias` > 0 the recorded outcomes are unfair to them — a share `bias` of the young applicants
    who repaid is recorded as defaulted (past decisions and collections that treated them
    harshly) — so a model learns, through credit history, to refuse young applicants it should
    accept: the fairness gate's case. Drawn from a stream of its own, so that with `bias` 0 every
    other column is the same rows as before the band existed."""
    rng = np.random.default_rng([seed, 1])
    young = rng.random(len(history_months)) < np.where(history_months < 48, 0.85, 0.04)
    band = np.where(young, 0, rng.choice([1, 2, 3], len(young), p=[0.45, 0.4, 0.15]))
    if bias > 0:
        defaulted = defaulted | (young & (rng.random(len(young)) < bias))
    return band, defaulted


CONTRACT = ["monthly", "one_year", "two_year"]


def generate_churn(rows: int, seed: int, positive_rate: float, drift: float = 0.0) -> pd.DataFrame:
    """Retail-bank customers; the target is closing every product within 90 days. The log-odds
    are close to linear in the features, which is what a logistic regression assumes."""
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 24.0, rows)
    age = rng.normal(45, 14, rows)
    balance = np.where(rng.random(rows) < 0.3, 0.0, rng.lognormal(9.5, 1.0, rows))
    products = rng.choice([1, 2, 3, 4], rows, p=[0.45, 0.4, 0.11, 0.04])
    calls = rng.poisson(1.2, rows)
    active = rng.random(rows) < 0.55
    card = rng.random(rows) < 0.7
    fees = rng.gamma(3.0, 4.0, rows)
    contract = rng.choice(len(CONTRACT), rows, p=[0.55, 0.25, 0.2])
    if drift > 0:
        # A competitor's offer: more calls, fewer active users, more month-to-month contracts.
        calls = calls + rng.poisson(1.5 * drift, rows)
        active = active & (rng.random(rows) > 0.3 * min(drift, 1.0))
        fees = fees * (1 + 0.4 * drift)
        contract = np.where(rng.random(rows) < 0.3 * min(drift, 1.0), 0, contract)
    risk = (
        -0.02 * np.minimum(tenure, 120)
        + 0.45 * np.minimum(calls, 8)
        - 1.0 * active
        - 0.3 * card
        + 0.05 * fees
        + 0.9 * (products >= 3)
        - 0.3 * (products == 2)
        + 0.015 * (age - 45)
        - 0.2 * np.log1p(balance) / 10
        + np.array([0.9, -0.2, -1.0])[contract]
    )
    churned = _with_rate(rng, 1.4 * risk, positive_rate)  # a ROC AUC near 0.85 for a good model
    return pd.DataFrame(
        {
            "tenure_months": np.clip(tenure, 0, 480).astype("int64"),
            "age": np.clip(np.round(age), 18, 100).astype("int64"),
            "balance": np.round(np.clip(balance, 0, 5_000_000.0), 2),
            "products": products.astype("int64"),
            "support_calls_90d": np.clip(calls, 0, 100).astype("int64"),
            "is_active": active.astype(bool),
            "has_credit_card": card.astype(bool),
            "monthly_fees": np.round(np.clip(fees, 0, 500.0), 2),
            "contract": pd.Categorical.from_codes(contract, CONTRACT).astype(str),
            "churned": churned.astype("int64"),
        }
    )


GENERATORS: dict[str, Generator] = {
    CARD_FRAUD: generate_transactions,
    CREDIT_DEFAULT: generate_credit,
    CHURN: generate_churn,
    MERCHANT_CATEGORY: generate_merchant_categories,
    LOSS_GIVEN_DEFAULT: generate_loss_given_default,
}


def is_synthetic(source: str) -> bool:
    return source == SYNTHETIC or source.startswith(f"{SYNTHETIC}:")


def generator(source: str) -> Generator:
    domain = source.partition(":")[2] or CARD_FRAUD
    if domain not in GENERATORS:
        raise ConveyorError(
            f"data.source {source!r} names no synthetic generator; use one of "
            f"{', '.join(f'{SYNTHETIC}:{d}' for d in GENERATORS)} (or a file, folder or s3:// URI)"
        )
    return GENERATORS[domain]


# The generators that take the `data.bias` knob (a seeded unfairness against one segment).
BIASED = {CREDIT_DEFAULT}


def generate(
    source: str, rows: int, seed: int, positive_rate: float, drift: float, bias: float = 0.0
) -> pd.DataFrame:
    make = generator(source)
    if not bias:
        return make(rows, seed, positive_rate, drift)
    if source.partition(":")[2] not in BIASED:
        raise ConveyorError(
            f"data.bias is {bias}, but {source} has no segment to be unfair to: the knob is "
            f"for {', '.join(f'{SYNTHETIC}:{d}' for d in sorted(BIASED))}; set it to 0"
        )
    return generate_credit(rows, seed, positive_rate, drift, bias)

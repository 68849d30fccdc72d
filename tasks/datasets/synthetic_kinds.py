"""Seeded synthetic data for the shipped specs that are not binary: card transactions sorted into
merchant categories (multiclass) and the loss on defaulted loans (regression). Same signature as
the binary generators (`tasks.datasets.synthetic`); `positive_rate` has no meaning here and is
ignored. `drift` > 0 shifts the population, never the mechanism from features to target."""

from __future__ import annotations

import numpy as np
import pandas as pd

MERCHANT_CATEGORIES = ["groceries", "fuel", "dining", "travel", "online_retail", "utilities"]
CHANNELS = ["chip", "contactless", "online"]
# Per category: (log-amount mean, log-amount sd, typical hour, hour sd, weekend share,
# channel shares, basket items mean, recurring share, km from home mean). Close enough between
# neighbours (groceries/dining, online_retail/utilities) that a model is good, not perfect.
_PROFILES = {
    "groceries": (3.6, 0.6, 17, 3.0, 0.35, (0.45, 0.50, 0.05), 14, 0.02, 4),
    "fuel": (3.9, 0.3, 12, 5.0, 0.30, (0.60, 0.38, 0.02), 1, 0.01, 15),
    "dining": (3.3, 0.6, 20, 2.5, 0.45, (0.35, 0.60, 0.05), 3, 0.01, 8),
    "travel": (5.8, 1.0, 11, 5.0, 0.30, (0.10, 0.10, 0.80), 2, 0.03, 400),
    "online_retail": (4.0, 0.9, 21, 3.0, 0.40, (0.02, 0.03, 0.95), 3, 0.10, 0),
    "utilities": (4.3, 0.5, 9, 3.0, 0.10, (0.05, 0.05, 0.90), 1, 0.85, 0),
}
# How often each category occurs: groceries are common, travel rare (5 % of rows).
_CATEGORY_SHARE = [0.34, 0.16, 0.20, 0.05, 0.15, 0.10]


def generate_merchant_categories(
    rows: int, seed: int, positive_rate: float = 0.0, drift: float = 0.0
) -> pd.DataFrame:
    """Card transactions labelled with their merchant category (6 classes, string labels)."""
    rng = np.random.default_rng(seed)
    category = rng.choice(len(MERCHANT_CATEGORIES), rows, p=_CATEGORY_SHARE)
    table = np.array([_PROFILES[c][:5] for c in MERCHANT_CATEGORIES], dtype=float)
    mu, sd, hour_mu, hour_sd, weekend_p = (table[category, i] for i in range(5))
    amount = rng.lognormal(mu, sd)
    hour = np.mod(np.round(rng.normal(hour_mu, hour_sd)), 24)
    weekend = rng.random(rows) < weekend_p
    channel_p = np.array([_PROFILES[c][5] for c in MERCHANT_CATEGORIES])[category]
    channel = (rng.random(rows)[:, None] > np.cumsum(channel_p, axis=1)).sum(axis=1)
    items = rng.poisson(np.array([_PROFILES[c][6] for c in MERCHANT_CATEGORIES])[category])
    recurring = (
        rng.random(rows) < np.array([_PROFILES[c][7] for c in MERCHANT_CATEGORIES])[category]
    )
    km = rng.exponential(np.array([_PROFILES[c][8] for c in MERCHANT_CATEGORIES])[category] + 1)
    if drift > 0:
        # Inflation and a move to online payment: amounts up, more online transactions.
        amount = amount * (1 + 0.3 * drift)
        channel = np.where(rng.random(rows) < 0.25 * min(drift, 1.0), 2, channel)
    return pd.DataFrame(
        {
            "amount": np.round(np.clip(amount, 0.5, 50_000.0), 2),
            "hour": np.clip(hour, 0, 23).astype("int64"),
            "is_weekend": weekend.astype(bool),
            "channel": pd.Categorical.from_codes(np.minimum(channel, 2), CHANNELS).astype(str),
            "basket_items": np.clip(items, 0, 200).astype("int64"),
            "is_recurring": recurring.astype(bool),
            "km_from_home": np.round(np.clip(km, 0, 20_000.0), 1),
            "category": pd.Categorical.from_codes(category, MERCHANT_CATEGORIES).astype(str),
        }
    )


SENIORITY = ["senior_secured", "senior_unsecured", "subordinated"]
REGIONS = ["north", "south", "east", "west"]


def generate_loss_given_default(
    rows: int, seed: int, positive_rate: float = 0.0, drift: float = 0.0
) -> pd.DataFrame:
    """Defaulted loans and the share of the exposure lost after recoveries (0 to 1)."""
    rng = np.random.default_rng(seed)
    seniority = rng.choice(len(SENIORITY), rows, p=[0.45, 0.4, 0.15])
    exposure = rng.lognormal(10.5, 0.9, rows)
    collateral = np.where(seniority == 0, exposure * rng.lognormal(0.1, 0.35, rows), 0.0)
    months = rng.gamma(2.0, 18.0, rows)
    guarantor = rng.random(rows) < 0.25
    region = rng.choice(len(REGIONS), rows)
    workout_costs = rng.gamma(2.0, 0.02, rows)
    if drift > 0:
        # A fall in house prices: collateral is worth less for the same loans.
        collateral = collateral * (1 - 0.25 * min(drift, 2.0) / 2)
    coverage = np.minimum(collateral / exposure, 1.5)
    loss = (
        np.array([0.25, 0.55, 0.75])[seniority]
        - 0.30 * np.minimum(coverage, 1.2)
        - 0.12 * guarantor
        + 0.04 * np.log1p(months) / np.log(100)
        + workout_costs
        + np.array([0.0, 0.03, -0.02, 0.01])[region]
        + rng.normal(0, 0.12, rows)
    )
    return pd.DataFrame(
        {
            "exposure": np.round(np.clip(exposure, 100, 5_000_000.0), 2),
            "collateral_value": np.round(np.clip(collateral, 0, 10_000_000.0), 2),
            "months_on_book": np.clip(np.round(months), 0, 480).astype("int64"),
            "seniority": pd.Categorical.from_codes(seniority, SENIORITY).astype(str),
            "has_guarantor": guarantor.astype(bool),
            "region": pd.Categorical.from_codes(region, REGIONS).astype(str),
            "workout_cost_share": np.round(np.clip(workout_costs, 0, 1.0), 4),
            "loss_given_default": np.round(np.clip(loss, 0.0, 1.0), 4),
        }
    )

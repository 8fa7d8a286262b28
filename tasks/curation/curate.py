"""Curate: turn confirmed labels into a versioned ground-truth dataset with a frozen test set.

Run it::

    flywheel curate --workload-id router --start 2026-11-01 --end 2026-12-01 --home /tmp/flywheel

Where labels come from: a thumbs-up makes the teacher's route the label; a subject-matter expert's
decision (:mod:`tasks.curation.review`: a confirmed routing error, a route the judge wrongly
doubted, a novel query labelled) replaces it whatever the rating, and ``discard`` removes the
record. The judge alone never labels anything (:mod:`tasks.curation.judge` only proposes).

The traffic audit (:func:`tasks.curation.review.draw_traffic_audit`), a random sample of the
teacher's traffic whatever its feedback, is the one unbiased measure of the teacher and the
students alike, so it is kept for the test split: a drawn record stays out of the dataset (neither
a thumbs-up nor the teacher's route makes it a training example) until experts decide it, and then
joins the test split whenever that happens, unless it is near a query an earlier version trained
on. Paired evidence against the teacher grows cycle by cycle (``audit_waiting`` and
``audit_to_test`` in the funnel).

Teacher labels (``teacher_labels="train"``; off by default): the ~90% of records nobody rated
carry the production teacher's own route, right most of the time. With the setting on, each
unrated, undecided record the teacher routed (:func:`teacher_labelled`: never a model named
``flywheel-...``, the flywheel's own students) joins *train* with that route as its label
(``label_source="teacher"``), at most ``max_teacher_labelled`` of them. A thumbs-down keeps a
record out unless an expert labels it; an expert's or a thumbs-up label of the same query wins
over the teacher's; the test set stays curated (the teacher would grade itself). Teacher-labelled
examples go through the same exact and semantic de-duplication and leakage check, ranked after
curated ones, and their labels are not written to the vector index (the judge and in-context
examples read labels there).

Cleaning, in order: exact de-duplication on the normalised query (NFKC, case-folded, whitespace
collapsed; an expert's label wins in its group, else the most frequent one); out-of-scope queries
kept as their own class (``out_of_scope="label"``) or dropped; *leakage*: a new example whose
query is a near-duplicate (cosine >= ``near_duplicate_threshold`` in Qdrant) of a frozen test
query never enters the dataset; *semantic de-duplication*: among the rest, a near-duplicate of an
example kept before (earlier in train, or an earlier record) is dropped; a class-balance cap
(``max_per_expert``) on train. The check is repeated on the final split: ``leakage_pairs`` in the
funnel counts train examples with a near-duplicate in test, and is 0 by construction. Across
versions too: a new example near any query an earlier version trained on (in the window or not:
the champion learned it) is never split into test; it joins train, counted as
``near_earlier_train`` in the funnel.

The split never moves an example. ``datasets/<workload>/test_ids.json`` and ``train_ids.json``
remember every id and normalised query ever assigned: a test example stays in the test set of
every later version (unless its label is withdrawn: rating turned negative without an expert's
label, or discarded) and its query never reaches train; a train example stays in train. Only
examples never seen before are split, stratified by expert
(``sklearn.model_selection.train_test_split``; an expert with fewer than two new examples goes to
train).

A version is content-addressed and immutable: ``datasets/<workload>/<version>/`` holds
``train.jsonl`` and ``test.jsonl`` (lines ``{"id", "query", "expert", "label_source"}`` sorted by
id; the source is ``sme``, ``feedback`` or ``teacher``) and ``manifest.json`` (counts, the funnel,
and the lineage: label sources per split, every expert decision used, the judges, their calibration,
the encoder and thresholds, the parent version); ``version = "v" + sha256(train + test +
experts)[:12]``, so the same data over the same label space gives the same version and a rerun
changes nothing. ``datasets/<workload>/latest.json`` points at the newest one. Stages that train or
evaluate on a version record it in MLflow with :func:`log_dataset_input`.

The funnel every cycle reports (``CurateResult.funnel``): records in the window -> with feedback
-> negative -> judged -> flagged by the judge as routing errors -> confirmed by experts -> labelled
-> ground truth -> train (by label source: ``train_sme``, ``train_feedback``,
``teacher_labelled``) / test, with the judge's calibration against the experts and the number of
novel queries (unlabelled, far from every labelled one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import unicodedata
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from tasks.core.clock import now_iso
from tasks.core.config import STUDENT_PREFIX, get_paths, utc_window
from tasks.core.errors import UserError
from tasks.core.files import write_json_atomic
from tasks.core.workload import (
    WorkloadSettings,
    teacher_models,
)
from tasks.curation.review import CalibrationSettings, NoveltySettings

if TYPE_CHECKING:
    import pandas as pd



#: Which label wins in an exact-duplicate group: an expert's, then a thumbs-up, then the teacher's.
SOURCE_RANK = {"sme": 0, "feedback": 1, "teacher": 2}


class LabelSpaceError(UserError, ValueError):
    """The workload's experts dropped one the dataset's previous version has."""


class NotEnoughData(UserError, RuntimeError):
    """Fewer labelled examples than ``min_examples``; the message shows the funnel."""


class CurateConfig(WorkloadSettings, CalibrationSettings, NoveltySettings):
    """Settings of ``flywheel curate``."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    start: datetime | None = Field(None, description="Window start, inclusive (UTC if naive; "
                                                     "default: the first record)")
    end: datetime | None = Field(None, description="Window end, exclusive (UTC if naive; "
                                                   "default: no end)")
    test_fraction: float = Field(0.4, gt=0.0, lt=1.0,
                                 description="Share of new examples that go to the test set "
                                             "(the talk used 60/40)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the train/test split")
    min_examples: int = Field(20, ge=1, le=10_000_000,
                              description="Fail when the dataset would have fewer examples")
    near_duplicate_threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="Cosine similarity at or above which two queries "
                                          "are near-duplicates (semantic de-dup, leakage check)")
    max_per_expert: int | None = Field(None, ge=1, le=10_000_000,
                                       description="Cap of train examples per expert (class "
                                                   "balance); examples already in train stay")
    out_of_scope: Literal["label", "drop"] = Field(
        "label", description="Queries labelled with the fallback expert: keep them as a class "
                             "the router learns ('label') or leave them out ('drop')")
    qdrant_url: str | None = Field(None, description="Qdrant server (default "
                                                     "$FLYWHEEL_QDRANT_URL; none: local mode)")
    teacher_labels: Literal["off", "train"] = Field(
        "off", description="Unrated records the production teacher routed: leave them out "
                           "('off', curated labels only) or add them to train with the "
                           "teacher's route as the label ('train'; never to test, never a "
                           "thumbs-down or an expert-decided record, never a flywheel model's)")
    max_teacher_labelled: int | None = Field(
        None, ge=0, le=10_000_000,
        description="With teacher_labels='train': at most this many teacher-labelled train "
                    "examples (those already in train first, then a seeded sample of new "
                    "ones); none: all of them")
    teacher_model: str | None = Field(
        None, min_length=1, max_length=500,
        description="The logged model whose routes are teacher labels (default: every model "
                    f"not named {STUDENT_PREFIX}..., the flywheel's own served routers)")
    run_key: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,199}$",
        description="Names this curation (the cycle's id): a retry with the same key returns "
                    "the version the first try built, even if records or labels arrived in "
                    "between (a task is a transaction over a fixed partition)")

    @model_validator(mode="after")
    def _window(self) -> CurateConfig:
        self.start, self.end = utc_window(self.start, self.end)
        return self

    @model_validator(mode="after")
    def _teacher_cap(self) -> CurateConfig:
        if self.max_teacher_labelled is not None and self.teacher_labels == "off":
            raise ValueError("max_teacher_labelled needs teacher_labels='train'")
        return self


class CurateResult(BaseModel):
    """The dataset version one curation produced (a small XCom value)."""

    workload_id: str
    version: str = Field(description='"v" + the first 12 hex digits of the digest')
    digest: str = Field(description="sha256 of train.jsonl and test.jsonl")
    created: bool = Field(description="False when this version already existed (same data)")
    dataset_dir: str
    train_path: str
    test_path: str
    n_train: int = Field(ge=0)
    n_test: int = Field(ge=0)
    label_counts: dict[str, dict[str, int]] = Field(
        description="split ('train'/'test') -> expert -> examples")
    label_space_change: dict[str, list[str]] | None = Field(
        None, description="Experts added since the previous version (none: unchanged)")
    funnel: dict[str, int | float | None] = Field(
        description="records_in_window, with_feedback, positive, negative, judged, "
                    "judge_flagged, sme_confirmed, labelled, teacher_eligible, ground_truth, "
                    "train (= train_sme + train_feedback + teacher_labelled), test, "
                    "judge calibration, novel, ...")


def normalise(text: str) -> str:
    """The key of exact de-duplication: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _read_assigned(path: Path) -> tuple[set[str], set[str]]:
    if not path.exists():
        return set(), set()
    data = json.loads(path.read_text())
    return set(data.get("ids", [])), set(data.get("queries", []))


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, data, indent=1, ensure_ascii=False, sort_keys=True)


def _jsonl(frame: pd.DataFrame) -> bytes:
    rows = frame.sort_values("id", kind="mergesort")
    return "".join(json.dumps({"id": r.id, "query": r.query, "expert": r.expert,
                               "label_source": r.label_source}, ensure_ascii=False) + "\n"
                   for r in rows.itertuples(index=False)).encode("utf-8")


def _dedup(labelled: pd.DataFrame, prefer: set[str]) -> pd.DataFrame:
    """One example per normalised query: an id assigned before if any, else the earliest record;
    its label is the group's most frequent label, counting only experts' labels when the group
    has any (ties: the representative's). Teacher-labelled records count only in a group without
    a curated label: a thumbs-up or an expert overrides the teacher."""
    import pandas as pd

    columns = ["id", "query", "expert", "norm", "timestamp", "label_source"]
    if labelled.empty:
        return pd.DataFrame(columns=columns)
    ordered = labelled.assign(_known=~labelled["id"].isin(prefer)).sort_values(
        ["_known", "timestamp", "id"], kind="mergesort")
    rows = []
    for _, group in ordered.groupby("norm", sort=False):
        curated = group[group["label_source"] != "teacher"]
        if len(curated):
            group = curated
        first = group.iloc[0]
        voters = group[group["label_source"] == "sme"]
        votes = Counter((voters if len(voters) else group)["label"])
        top = max(votes.values())
        expert = first["label"] if votes.get(first["label"], 0) == top else min(
            label for label, n in votes.items() if n == top)
        source = min(group["label_source"], key=SOURCE_RANK.__getitem__)
        rows.append({"id": first["id"], "query": first["query"], "expert": expert,
                     "norm": first["norm"], "timestamp": first["timestamp"],
                     "label_source": source})
    return pd.DataFrame(rows, columns=columns)


def _split(fresh: pd.DataFrame, test_fraction: float, seed: int
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split of never-assigned examples; experts with < 2 of them go to train."""
    from sklearn.model_selection import train_test_split

    fresh = fresh.sort_values("id", kind="mergesort").reset_index(drop=True)
    counts = fresh["expert"].value_counts()
    splittable = fresh[fresh["expert"].map(counts) >= 2]
    rare = fresh[fresh["expert"].map(counts) < 2]
    if len(splittable) < 2:
        return fresh, fresh.iloc[0:0]
    try:
        train, test = train_test_split(splittable, test_size=test_fraction, random_state=seed,
                                       stratify=splittable["expert"])
    except ValueError:  # too few examples for one test item per expert: split unstratified
        train, test = train_test_split(splittable, test_size=test_fraction, random_state=seed)
    import pandas as pd

    return pd.concat([train, rare]), test


def _near_duplicates(index: Any, ids: list[str], within: list[str], threshold: float,
                     k: int = 10) -> dict[str, list[str]]:
    """Record id -> ids among ``within`` (itself excluded) at cosine >= ``threshold``."""
    if not ids or not within:
        return {}
    hits = index.search(index.vectors(ids), k, within=within, exclude=ids)
    return {rid: [h.record_id for h in found if h.score >= threshold]
            for rid, found in zip(ids, hits, strict=True)}


def teacher_labelled(window: pd.DataFrame, decisions: dict[str, dict[str, Any]],
                     experts: list[str], teacher_model: str | list[str] | None = None
                     ) -> pd.DataFrame:
    """The records of ``window`` whose label can only be the teacher's own route.

    A record qualifies when nobody rated it (a thumbs-up already makes it a curated example; a
    thumbs-down says the route may be wrong, and only an expert's label can save it), no expert
    decided it (an expert's label or ``discard`` wins), its route is one of ``experts`` and the
    production teacher routed it: ``teacher_model`` (one name or several) if given, else any
    model not named ``flywheel-...`` (the flywheel's students must not learn from each other's
    answers).

    Returns:
        The qualifying rows of ``window`` with ``label`` (the route) and
        ``label_source="teacher"``.
    """
    from tasks.curation.review import teacher_mask

    by_teacher = teacher_mask(window, teacher_model)
    chosen = window[window["rating"].isna() & ~window["id"].isin(list(decisions))
                    & window["route"].isin(experts) & by_teacher]
    return chosen.assign(label=chosen["route"], label_source="teacher")


def _cap_teacher(examples: pd.DataFrame, cap: int | None, seed: int
                 ) -> tuple[pd.DataFrame, int]:
    """At most ``cap`` teacher-labelled examples: those already in train, then a seeded sample of
    the new ones; returns the examples kept and how many teacher-labelled ones were dropped."""
    import pandas as pd

    teacher = examples[examples["_teacher"]]
    if cap is None or len(teacher) <= cap:
        return examples, 0
    new = teacher[~teacher["_sticky"]].sort_values("id", kind="mergesort").sample(
        frac=1.0, random_state=seed)
    kept = pd.concat([teacher[teacher["_sticky"]], new]).head(cap)
    return examples[~examples["_teacher"] | examples["id"].isin(kept["id"])], len(teacher) - cap


def _review_funnel(config: CurateConfig, window: pd.DataFrame) -> tuple[dict[str, Any],
                                                                       dict[str, Any]]:
    """Funnel counts of the judge and the experts over the window, and the judge calibration."""
    from tasks.curation.review import DISCARD, ReviewStore, calibration

    store = ReviewStore(config.home, config.workload_id)
    judged, decided, queue = store.judgements(), store.decisions(), store.queue()
    in_window = set(window["id"])
    negatives = set(window.loc[(window["rating"] == -1).fillna(False), "id"])
    route = dict(zip(window["id"], window["route"], strict=True))
    verdicts = [judged[r] for r in negatives if r in judged]
    reviewed = {r: d for r, d in decided.items() if r in in_window}
    flagged = {r for r in negatives if judged.get(r, {}).get("routing_error") is True}
    cal = calibration(store, in_window, min_agreement=config.min_judge_agreement)
    counts = {
        "judged": len(verdicts),
        "judge_flagged": len(flagged),
        "judge_abstained": sum(v.get("routing_error") is None and not v.get("error")
                               for v in verdicts),
        "judge_errors": sum(bool(v.get("error")) for v in verdicts),
        "sme_reviewed": len(reviewed),
        "sme_confirmed": sum(d["label"] not in (DISCARD, route[r]) for r, d in reviewed.items()
                             if r in negatives),
        "sme_confirmed_of_flagged": sum(reviewed[r]["label"] not in (DISCARD, route[r])
                                        for r in flagged if r in reviewed),
        "sme_pending": sum(r in in_window and r not in decided for r in queue),
        "judge_calibration_n": cal["n"], "judge_agreement": cal["agreement"],
        "judge_kappa": cal["kappa"], "judge_precision": cal["precision"],
        "judge_alarm": int(cal["alarm"]),
    }
    lineage = {
        "judges": sorted({v["judge"] for v in verdicts}),
        "calibration": cal,
        "decisions": {r: {k: d[k] for k in ("label", "reviewer", "source", "decided_at")}
                      for r, d in sorted(reviewed.items())},
    }
    return counts, lineage


def curate(config: CurateConfig) -> CurateResult:
    """Build (or find) the dataset version of ``config.workload_id`` over the window.

    Args:
        config: the workload, the window, the split, the cleaning thresholds and the minimum size.

    Returns:
        The version, its paths, its size per split and expert, and the funnel.

    Raises:
        NotEnoughData: fewer than ``config.min_examples`` examples (nothing is written).
    """
    import pandas as pd

    from tasks.core.embeddings import MODEL_NAME
    from tasks.core.files import file_lock
    from tasks.curation.review import ReviewStore, announce_calibration, confirmed_labels
    from tasks.curation.vectors import open_index, resolve_url
    from tasks.ingest.store import load_store

    paths = get_paths(config.home)
    root = paths.datasets / config.workload_id
    root.mkdir(parents=True, exist_ok=True)
    experts = list(config.experts)
    keep = [e for e in experts
            if not (config.out_of_scope == "drop" and e == config.fallback_expert)]
    change = label_space_change(root, experts, config)
    thr = config.near_duplicate_threshold
    workload = config.workload()
    teachers = teacher_models(config.teacher_model, workload)
    done = root / "runs" / f"{config.run_key}.json" if config.run_key else None
    with file_lock(root / ".curate.lock"):
        if done is not None and done.exists():  # a retry: the first try's version
            return CurateResult.model_validate_json(done.read_text())
        store = load_store(config.home, workload_id=config.workload_id)
        window = store
        if config.start is not None:
            window = window[window["timestamp"] >= config.start]
        if config.end is not None:
            window = window[window["timestamp"] < config.end]
        review_store = ReviewStore(config.home, config.workload_id)
        decisions = review_store.decisions()
        # the traffic audit, a random sample of the teacher's traffic, is the unbiased measure
        # of teacher and students alike: a drawn record waits out of the dataset until experts
        # decide it, then joins the test split (never train, where no one could grade on it)
        drawn = set(review_store.traffic_audit())
        audited = {rid for rid in drawn
                   if rid in decisions and decisions[rid]["label"] in experts}
        labels_all = confirmed_labels(store, decisions, experts)
        labelled_all = store.merge(labels_all, on="id", how="inner")
        labelled_all["norm"] = labelled_all["query"].map(normalise)
        labelled = labelled_all[labelled_all["id"].isin(window["id"])]
        positive = window["rating"] == 1
        review_counts, review_lineage = _review_funnel(config, window)
        funnel: dict[str, int | float | None] = {
            "records_in_window": len(window),
            "with_feedback": int(window["rating"].notna().sum()),
            "positive": int(positive.sum()),
            "negative": int((window["rating"] == -1).sum()),
            **{k: review_counts[k] for k in ("judged", "judge_flagged", "judge_abstained",
                                              "judge_errors", "sme_reviewed", "sme_confirmed",
                                              "sme_confirmed_of_flagged", "sme_pending")},
            "labelled": len(labelled),
            "labelled_feedback": int((labelled["label_source"] == "feedback").sum()),
            "labelled_sme": int((labelled["label_source"] == "sme").sum()),
            "after_dedup": int(labelled["norm"].nunique()),
            # queries labelled with more than one expert: the experts', else the majority, wins
            "label_conflicts": int((labelled.groupby("norm")["label"].nunique() > 1).sum()),
        }
        from_teacher = teacher_labelled(window, decisions, experts, teachers)
        funnel["teacher_eligible"] = len(from_teacher)
        pool = labelled
        if config.teacher_labels == "train" and len(from_teacher):
            pool = pd.concat([labelled, from_teacher.assign(
                norm=from_teacher["query"].map(normalise))], ignore_index=True)
        waiting = pool["id"].isin(drawn - audited)
        funnel["audit_waiting"] = int(waiting.sum())
        pool = pool[~waiting]

        test_ids, test_queries = _read_assigned(root / "test_ids.json")
        train_ids, train_queries = _read_assigned(root / "train_ids.json")

        # The frozen test set: every example ever assigned to test that still has a label,
        # wherever it falls relative to the window.
        frozen = labelled_all[labelled_all["id"].isin(test_ids)
                              & labelled_all["label"].isin(keep)].assign(
            expert=lambda f: f["label"])
        frozen = frozen.drop_duplicates("norm")[["id", "query", "expert", "norm", "label_source"]]

        candidates = pool[~pool["id"].isin(test_ids) & ~pool["norm"].isin(test_queries)]
        examples = _dedup(candidates, prefer=train_ids)
        out_of_scope = examples["expert"] == config.fallback_expert
        funnel["out_of_scope"] = int(out_of_scope.sum())
        if config.out_of_scope == "drop":
            examples = examples[~out_of_scope]
        sticky = examples["id"].isin(train_ids) | examples["norm"].isin(train_queries)
        # curated examples first, so that a near-duplicate teacher-labelled one is the one dropped
        # ... and traffic-audit ones first among the new, so that a near-duplicate of one is
        # the one dropped, not the audited record
        examples = examples.assign(_sticky=sticky, _teacher=examples["label_source"] == "teacher",
                                   _audit=examples["id"].isin(audited) & ~sticky
                                   ).sort_values(["_teacher", "_sticky", "_audit", "timestamp",
                                                  "id"],
                                                 ascending=[True, False, False, True, True],
                                                 kind="mergesort")

        with open_index(config.workload_id, home=config.home, url=config.qdrant_url) as index:
            needed = pd.concat([store[store["id"].isin(examples["id"])],
                                store[store["id"].isin(frozen["id"])]])
            index.index_records(needed)
            # leakage: a new example near a frozen test query never enters the dataset
            # (an audited record joins the test split: near a test query is no leak for it)
            fresh_ids = examples.loc[~examples["_sticky"] & ~examples["_audit"], "id"].tolist()
            near_test = _near_duplicates(index, fresh_ids, frozen["id"].tolist(), thr)
            leaked = {rid for rid, found in near_test.items() if found}
            examples = examples[~examples["id"].isin(leaked)]
            # semantic de-dup: keep the first of each near-duplicate group (train first)
            ordered = examples["id"].tolist()
            near = _near_duplicates(index, ordered, ordered, thr)
            kept: set[str] = set()
            for rid, stays in zip(ordered, examples["_sticky"] & ~examples["_teacher"],
                                  strict=True):
                if stays or not any(other in kept for other in near.get(rid, [])):
                    kept.add(rid)
            funnel["semantic_duplicates"] = len(ordered) - len(kept)
            examples = examples[examples["id"].isin(kept)]
            examples, teacher_capped = _cap_teacher(examples, config.max_teacher_labelled,
                                                    config.seed)

            # only curated examples are split: teacher-labelled ones go to train, and so does
            # one near a query an earlier version trained on (a champion would have seen it)
            sticky, by_teacher = examples["_sticky"], examples["_teacher"]
            fresh = examples[~sticky & ~by_teacher]
            earlier = store[store["id"].isin(train_ids) & ~store["id"].isin(examples["id"])]
            index.index_records(earlier)
            near_old = _near_duplicates(index, fresh["id"].tolist(), earlier["id"].tolist(),
                                        thr, k=1)
            seen_before = fresh["id"].isin({rid for rid, found in near_old.items() if found})
            to_test = ~seen_before & fresh["_audit"]
            fresh_train, fresh_test = _split(fresh[~seen_before & ~to_test],
                                             config.test_fraction, config.seed)
            fresh_test = pd.concat([fresh[to_test], fresh_test])
            funnel["audit_to_test"] = int(to_test.sum())
            train = pd.concat([examples[sticky], fresh[seen_before], fresh_train,
                               examples[~sticky & by_teacher]])
            funnel["near_earlier_train"] = int(seen_before.sum())
            capped = 0
            if config.max_per_expert is not None:
                train = train.assign(_order=range(len(train)))
                ranked = train.sort_values(["_sticky", "_order"], ascending=[False, True],
                                           kind="mergesort")
                position = ranked.groupby("expert").cumcount()
                over = ranked[(position >= config.max_per_expert) & ~ranked["_sticky"]]
                capped = len(over)
                train = train[~train["id"].isin(over["id"])]
            test = pd.concat([frozen, fresh_test])
            # the final check, on the split itself: no train query near a test query
            final = _near_duplicates(index, train["id"].tolist(), test["id"].tolist(), thr,
                                     k=1)
            funnel["leakage_pairs"] = sum(bool(found) for found in final.values())
            funnel.update({"leakage_removed": len(leaked), "balance_capped": capped})

            funnel["novel"] = _count_novel(index, window["id"].tolist(),
                                           set(labelled_all["id"]), config.novelty_threshold)
            columns = ["id", "query", "expert", "norm", "label_source"]
            train, test = train[columns], test[columns]
            train_sources = Counter(train["label_source"])
            funnel.update({
                "ground_truth": len(train) + len(test),
                # frozen test examples whose label was withdrawn
                "test_retracted": len(test_ids) - len(frozen),
                "train": len(train),
                "train_sme": train_sources["sme"],
                "train_feedback": train_sources["feedback"],
                "teacher_labelled": train_sources["teacher"],
                "teacher_capped": teacher_capped,
                "test": len(test),
            })
            funnel.update({k: review_counts[k] for k in (
                "judge_calibration_n", "judge_agreement", "judge_kappa", "judge_precision",
                "judge_alarm")})
            if len(train) + len(test) < config.min_examples:
                raise NotEnoughData(
                    f"curate {config.workload_id}: {len(train) + len(test)} examples, fewer "
                    f"than min_examples={config.min_examples}; funnel: {json.dumps(funnel)}")
            # a teacher label stays out of the index: the judge and in-context examples read
            # labels from there, and the teacher must not vouch for itself
            index.update_payloads({
                **{r: {"label": e, "split": "train"} if s != "teacher" else {"split": "train"}
                   for r, e, s in zip(train["id"], train["expert"], train["label_source"],
                                      strict=True)},
                **{r: {"label": e, "split": "test"} for r, e in zip(
                    test["id"], test["expert"], strict=True)}})

        train_bytes, test_bytes = _jsonl(train), _jsonl(test)
        # the label space is part of the version: the same examples over other experts
        # train another classifier
        digest = hashlib.sha256(b"train.jsonl\n" + train_bytes + b"test.jsonl\n" + test_bytes
                                + b"experts\n" + json.dumps(experts).encode()).hexdigest()
        version = "v" + digest[:12]
        dataset_dir = root / version
        label_counts = {
            name: dict(sorted(Counter(frame["expert"]).items()))
            for name, frame in (("train", train), ("test", test))
        }
        latest_path = root / "latest.json"
        parent = json.loads(latest_path.read_text())["version"] if latest_path.exists() else None
        in_version = set(train["id"]) | set(test["id"])
        sources = {name: dict(sorted(Counter(frame["label_source"]).items()))
                   for name, frame in (("train", train), ("test", test))}
        created = not (dataset_dir / "manifest.json").exists()
        if created:
            manifest = {
                "version": version, "digest": digest, "workload_id": config.workload_id,
                "created_at": now_iso(),
                "window": {"start": config.start.isoformat() if config.start else None,
                           "end": config.end.isoformat() if config.end else None},
                "test_fraction": config.test_fraction, "seed": config.seed,
                "experts": experts, "fallback_expert": config.fallback_expert,
                "system_prompt": workload.system_prompt() if workload else None,
                "teacher_models": teachers, "label_space_change": change,
                "n_train": len(train), "n_test": len(test), "counts": label_counts,
                "funnel": funnel, "files": ["train.jsonl", "test.jsonl"],
                "lineage": {
                    "parent_version": parent if parent != version else None,
                    "label_sources": dict(sorted((Counter(sources["train"])
                                                  + Counter(sources["test"])).items())),
                    "label_sources_by_split": sources,
                    "teacher_labels": config.teacher_labels,
                    "max_teacher_labelled": config.max_teacher_labelled,
                    "teacher_model": ", ".join(teachers) or f"not {STUDENT_PREFIX}*",
                    "sme_decisions": {r: d for r, d in review_lineage["decisions"].items()
                                      if r in in_version},
                    "judges": review_lineage["judges"],
                    "judge_calibration": review_lineage["calibration"],
                    "encoder": MODEL_NAME,
                    "vector_index": {"collection": f"{config.workload_id}-queries",
                                     "mode": "server" if resolve_url(config.qdrant_url)
                                     else "local"},
                    "near_duplicate_threshold": thr, "out_of_scope": config.out_of_scope,
                    "max_per_expert": config.max_per_expert,
                },
            }
            tmp = root / f".{version}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "train.jsonl").write_bytes(train_bytes)
            (tmp / "test.jsonl").write_bytes(test_bytes)
            _write_json(tmp / "manifest.json", manifest)
            shutil.rmtree(dataset_dir, ignore_errors=True)  # a half-written dir of a dead run
            os.rename(tmp, dataset_dir)

        # Remember the assignments only after the version exists (a crash before is redone).
        _write_json(root / "test_ids.json", {
            "ids": sorted(test_ids | set(test["id"])),
            "queries": sorted(test_queries | set(test["norm"]))})
        _write_json(root / "train_ids.json", {
            "ids": sorted(train_ids | set(train["id"])),
            "queries": sorted(train_queries | set(train["norm"]))})
        _write_json(latest_path, {
            "version": version, "digest": digest, "dataset_dir": str(dataset_dir)})

        result = CurateResult(
            workload_id=config.workload_id, version=version, digest=digest, created=created,
            dataset_dir=str(dataset_dir), train_path=str(dataset_dir / "train.jsonl"),
            test_path=str(dataset_dir / "test.jsonl"), n_train=len(train), n_test=len(test),
            label_counts=label_counts, funnel=funnel, label_space_change=change)
        if done is not None:
            write_json_atomic(done, result.model_dump(mode="json"))

    if review_counts["judge_alarm"]:
        announce_calibration(review_lineage["calibration"])
    return result


def label_space_change(root: Path, experts: list[str],
                       config: CurateConfig) -> dict[str, list[str]] | None:
    """How ``experts`` differ from the label space of the workload's newest dataset version:
    ``{"added": [...], "removed": []}``, or None when unchanged or there is no version yet.

    An added expert is a supported change: the frozen test set grows to include it, and the
    champion, re-evaluated on it, is seen not to name it. A removed one is refused
    (:class:`LabelSpaceError`): its examples would vanish from the frozen test set and the
    champion's scores would stop being comparable. Remove one by curating into a new home or
    workload id.
    """
    latest = root / "latest.json"
    if not latest.is_file():
        return None
    manifest_path = Path(json.loads(latest.read_text())["dataset_dir"]) / "manifest.json"
    if not manifest_path.is_file():
        return None
    before = json.loads(manifest_path.read_text()).get("experts") or []
    added = [e for e in experts if e not in before]
    removed = [e for e in before if e not in experts]
    if removed:
        raise LabelSpaceError(
            f"curate {config.workload_id}: the experts no longer include {', '.join(removed)}, "
            f"which dataset version {manifest_path.parent.name} has; removing an expert is "
            f"refused (its frozen test examples would vanish and the champion's scores would "
            f"stop being comparable). Keep it in the workload file, or start the workload "
            f"afresh under a new workload_id")
    return {"added": added, "removed": []} if added else None


def _count_novel(index: Any, window_ids: list[str], labelled: set[str],
                 threshold: float) -> int:
    """Indexed, unlabelled queries of the window whose nearest labelled query is below
    ``threshold`` (cosine)."""
    indexed = index.payloads(window_ids)
    unlabelled = [r for r in window_ids if r in indexed and r not in labelled]
    if not unlabelled:
        return 0
    best = index.search(index.vectors(unlabelled), 1, labelled=True)
    return sum((hits[0].score if hits else -1.0) < threshold for hits in best)


def log_dataset_input(dataset_dir: str | os.PathLike[str], context: str = "training") -> None:
    """Record a dataset version as an input of the active MLflow run (train and test splits).

    Call it inside the run that trains or evaluates on the version, so the run's page links to
    the exact data: MLflow stores each split's name (``<workload>-<version>-<split>``), digest,
    schema and source (the version folder), and tags them with the version and split.

    Args:
        dataset_dir: a version folder written by :func:`curate`.
        context: the run's use of it (MLflow's input context, e.g. "training", "evaluation").

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a curated version.
        RuntimeError: no MLflow run is active.
    """
    import mlflow.data
    import pandas as pd

    import mlflow

    folder = Path(dataset_dir)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{folder}: not a dataset version (no manifest.json)")
    if mlflow.active_run() is None:
        raise RuntimeError("log_dataset_input needs an active MLflow run")
    manifest = json.loads(manifest_path.read_text())
    for split in ("train", "test"):
        frame = pd.read_json(folder / f"{split}.jsonl", lines=True, dtype=False)
        if frame.empty:
            frame = pd.DataFrame(columns=["id", "query", "expert"])
        dataset = mlflow.data.from_pandas(
            frame, source=str(folder / f"{split}.jsonl"), targets="expert",
            name=f"{manifest.get('workload_id', folder.parent.name)}-{manifest['version']}-{split}")
        mlflow.log_input(dataset, context=context,
                         tags={"flywheel.dataset_version": manifest["version"],
                               "flywheel.dataset_digest": manifest["digest"],
                               "flywheel.split": split})


def print_funnel(funnel: dict[str, int | float | None]) -> None:
    """The funnel as the talk draws it, top to bottom, then the cleaning and calibration."""
    for name, value in funnel.items():
        shown = "-" if value is None else (f"{value:.3f}" if isinstance(value, float)
                                           else str(value))
        print(f"  {name:<26} {shown:>8}")


def main(argv: list[str] | None = None) -> int:
    from tasks.core.settings import parse_config

    config = parse_config(CurateConfig, argv, prog="flywheel curate",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        result = curate(config)
    except (NotEnoughData, LabelSpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "new" if result.created else "unchanged"
    print(f"curate {result.workload_id}: {result.version} ({state}) -> {result.dataset_dir}")
    if result.label_space_change:
        print(f"  label space changed: added {', '.join(result.label_space_change['added'])}")
    print_funnel(result.funnel)
    for split, counts in result.label_counts.items():
        print(f"  {split:<5} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Curate: turn positively rated records into a versioned dataset with a frozen test set.

Run it::

    flywheel curate --workload-id router --start 2026-11-01 --end 2026-12-01 --home /tmp/flywheel

The funnel, in the numbers every cycle reports: records in the window -> with feedback ->
positive / negative -> labelled (positive, route among the experts: the teacher's route is the
label) -> after exact de-duplication on the normalised query (NFKC, case-folded, whitespace
collapsed; the most frequent route of a group is its label).

The split never moves an example. ``datasets/<workload>/test_ids.json`` and ``train_ids.json``
remember every id and normalised query ever assigned: a test example stays in the test set of
every later version (unless its record's latest rating turns negative) and its query never reaches
train; a train example stays in train. Only examples never seen before are split, stratified by
expert (``sklearn.model_selection.train_test_split``; an expert with fewer than two new examples
goes to train).

A version is content-addressed: ``datasets/<workload>/<version>/`` holds ``train.jsonl`` and
``test.jsonl`` (lines ``{"id", "query", "expert"}`` sorted by id) and ``manifest.json``;
``version = "v" + sha256(train + test)[:12]``, so the same data gives the same version and a rerun
changes nothing. ``datasets/<workload>/latest.json`` points at the newest one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import unicodedata
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator

from tasks.config import EXPERTS, get_paths

if TYPE_CHECKING:
    import pandas as pd


class NotEnoughData(RuntimeError):
    """Fewer labelled examples than ``min_examples``; the message shows the funnel."""


class CurateConfig(BaseModel):
    """Settings of ``flywheel curate``."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    workload_id: str = Field("router", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$",
                             description="Which agent node's records to curate")
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
    experts: list[str] = Field(list(EXPERTS), min_length=1, max_length=1000,
                               description="Labels allowed: the router's expert agents")

    @model_validator(mode="after")
    def _window(self) -> CurateConfig:
        if self.start is not None and self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=UTC)
        if self.end is not None and self.end.tzinfo is None:
            self.end = self.end.replace(tzinfo=UTC)
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
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
    funnel: dict[str, int] = Field(description="records_in_window, with_feedback, positive, "
                                               "negative, labelled, after_dedup, ...")


def normalise(text: str) -> str:
    """The key of exact de-duplication: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _read_assigned(path: Path) -> tuple[set[str], set[str]]:
    if not path.exists():
        return set(), set()
    data = json.loads(path.read_text())
    return set(data.get("ids", [])), set(data.get("queries", []))


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonl(frame: pd.DataFrame) -> bytes:
    rows = frame.sort_values("id", kind="mergesort")
    return "".join(json.dumps({"id": r.id, "query": r.query, "expert": r.expert},
                              ensure_ascii=False) + "\n"
                   for r in rows.itertuples(index=False)).encode("utf-8")


def _dedup(labelled: pd.DataFrame, prefer: set[str]) -> pd.DataFrame:
    """One example per normalised query: an id assigned before if any, else the earliest record;
    its label is the group's most frequent route (ties: the representative's)."""
    if labelled.empty:
        return labelled.assign(expert=labelled["route"])
    ordered = labelled.assign(_known=~labelled["id"].isin(prefer)).sort_values(
        ["_known", "timestamp", "id"], kind="mergesort")
    rows = []
    for _, group in ordered.groupby("norm", sort=False):
        first = group.iloc[0]
        votes = Counter(group["route"])
        top = max(votes.values())
        expert = first["route"] if votes[first["route"]] == top else min(
            route for route, n in votes.items() if n == top)
        rows.append({"id": first["id"], "query": first["query"], "expert": expert,
                     "norm": first["norm"]})
    import pandas as pd

    return pd.DataFrame(rows, columns=["id", "query", "expert", "norm"])


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


def curate(config: CurateConfig) -> CurateResult:
    """Build (or find) the dataset version of ``config.workload_id`` over the window.

    Args:
        config: the workload, the window, the split and the minimum size.

    Returns:
        The version, its paths, its size per split and expert, and the funnel counts.

    Raises:
        NotEnoughData: fewer than ``config.min_examples`` examples (nothing is written).
    """
    import pandas as pd

    from tasks.ingest import file_lock
    from tasks.validate import load_store

    paths = get_paths(config.home)
    root = paths.datasets / config.workload_id
    root.mkdir(parents=True, exist_ok=True)
    experts = set(config.experts)
    with file_lock(root / ".curate.lock"):
        store = load_store(config.home, workload_id=config.workload_id)
        window = store
        if config.start is not None:
            window = window[window["timestamp"] >= config.start]
        if config.end is not None:
            window = window[window["timestamp"] < config.end]
        positive = window["rating"] == 1
        labelled = window[positive.fillna(False) & window["route"].isin(experts)].copy()
        labelled["norm"] = labelled["query"].map(normalise)
        funnel = {
            "records_in_window": len(window),
            "with_feedback": int(window["rating"].notna().sum()),
            "positive": int(positive.sum()),
            "negative": int((window["rating"] == -1).sum()),
            "labelled": len(labelled),
            "after_dedup": int(labelled["norm"].nunique()),
            # queries rated right under more than one expert: labelled by majority
            "label_conflicts": int((labelled.groupby("norm")["route"].nunique() > 1).sum()),
        }

        test_ids, test_queries = _read_assigned(root / "test_ids.json")
        train_ids, train_queries = _read_assigned(root / "train_ids.json")

        # The frozen test set: every example ever assigned to test whose record is still
        # positively rated, wherever it falls relative to the window.
        good = store[(store["rating"] == 1).fillna(False) & store["route"].isin(experts)]
        frozen = good[good["id"].isin(test_ids)].assign(
            expert=lambda f: f["route"], norm=lambda f: f["query"].map(normalise))
        frozen = frozen.drop_duplicates("norm")[["id", "query", "expert", "norm"]]

        candidates = labelled[~labelled["id"].isin(test_ids)
                              & ~labelled["norm"].isin(test_queries)]
        examples = _dedup(candidates, prefer=train_ids)
        sticky = examples["id"].isin(train_ids) | examples["norm"].isin(train_queries)
        fresh_train, fresh_test = _split(examples[~sticky], config.test_fraction, config.seed)
        train = pd.concat([examples[sticky], fresh_train])
        test = pd.concat([frozen, fresh_test])
        funnel.update({
            # frozen test examples whose record is no longer rated positive
            "test_retracted": len(test_ids) - len(frozen),
            "train": len(train),
            "test": len(test),
        })
        if len(train) + len(test) < config.min_examples:
            raise NotEnoughData(
                f"curate {config.workload_id}: {len(train) + len(test)} examples, fewer than "
                f"min_examples={config.min_examples}; funnel: {json.dumps(funnel)}")

        train_bytes, test_bytes = _jsonl(train), _jsonl(test)
        digest = hashlib.sha256(b"train.jsonl\n" + train_bytes + b"test.jsonl\n"
                                + test_bytes).hexdigest()
        version = "v" + digest[:12]
        dataset_dir = root / version
        label_counts = {
            name: dict(sorted(Counter(frame["expert"]).items()))
            for name, frame in (("train", train), ("test", test))
        }
        created = not (dataset_dir / "manifest.json").exists()
        if created:
            manifest = {
                "version": version, "digest": digest, "workload_id": config.workload_id,
                "created_at": datetime.now(UTC).isoformat(),
                "window": {"start": config.start.isoformat() if config.start else None,
                           "end": config.end.isoformat() if config.end else None},
                "test_fraction": config.test_fraction, "seed": config.seed,
                "experts": list(config.experts),
                "n_train": len(train), "n_test": len(test), "counts": label_counts,
                "funnel": funnel, "files": ["train.jsonl", "test.jsonl"],
            }
            tmp = root / f".{version}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "train.jsonl").write_bytes(train_bytes)
            (tmp / "test.jsonl").write_bytes(test_bytes)
            _write_json_atomic(tmp / "manifest.json", manifest)
            shutil.rmtree(dataset_dir, ignore_errors=True)  # a half-written dir of a dead run
            os.rename(tmp, dataset_dir)

        # Remember the assignments only after the version exists (a crash before is redone).
        _write_json_atomic(root / "test_ids.json", {
            "ids": sorted(test_ids | set(test["id"])),
            "queries": sorted(test_queries | set(test["norm"]))})
        _write_json_atomic(root / "train_ids.json", {
            "ids": sorted(train_ids | set(train["id"])),
            "queries": sorted(train_queries | set(train["norm"]))})
        _write_json_atomic(root / "latest.json", {
            "version": version, "digest": digest, "dataset_dir": str(dataset_dir)})

    return CurateResult(
        workload_id=config.workload_id, version=version, digest=digest, created=created,
        dataset_dir=str(dataset_dir), train_path=str(dataset_dir / "train.jsonl"),
        test_path=str(dataset_dir / "test.jsonl"), n_train=len(train), n_test=len(test),
        label_counts=label_counts, funnel=funnel)


def main(argv: list[str] | None = None) -> int:
    from tasks.settings import parse_config

    config = parse_config(CurateConfig, argv, prog="flywheel curate",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        result = curate(config)
    except NotEnoughData as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "new" if result.created else "unchanged"
    print(f"curate {result.workload_id}: {result.version} ({state}) -> {result.dataset_dir}")
    for name, count in result.funnel.items():
        print(f"  {name:<20} {count:>8}")
    for split, counts in result.label_counts.items():
        print(f"  {split:<5} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

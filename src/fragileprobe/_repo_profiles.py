"""Runs and profiles: the characterization evidence of a store (tables ``runs`` and ``trials``).

The rules this repository keeps (``ProfileStore``'s docstring states them for users):

* Every trial is its own transaction (:meth:`ProfileRepository.record_trial`), committed the moment the
  trial ends, so an interrupted run loses at most the trial that was running.
* A stored trial is never overwritten: a trial index already stored with other content raises
  ``StoreError``; the same trial written again is a no-op (``finish_run`` writes every trial of the result).
* Ceilings and profiles are derived again from every stored trial of every run of the model, finished or
  not, never read from a stored ceiling.
* An imported document whose stated ceiling disagrees with its own trials is refused whole
  (:func:`characterizations_from_export`, pure: no database).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from fragileprobe._db import RecordColumns, canonical_json
from fragileprobe._errors import ConfigError, StoreError
from fragileprobe._profile import (
    DEFAULT_MARGIN_FRACTION,
    DEFAULT_MARGIN_LEVELS,
    FORMAT_VERSION,
    Characterization,
    DeviceProfile,
    TrialResult,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from fragileprobe._db import Connection, Database

__all__ = ["ProfileRepository", "RunRow", "characterizations_from_export"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RunRow:
    """One characterization run as stored (finished or not)."""

    run_id: str
    host: str
    model_key: str | None
    name: str | None
    params: Mapping[str, Any]
    started_at_s: float
    finished_at_s: float | None
    status: str
    trials: tuple[TrialResult, ...]


# runs(run_id, host, model_key, name, params_json, started_at_s, finished_at_s, status); the trials come
# from their own table.
_RUN = RecordColumns(RunRow, json={"params": None}, derived=("trials",))
_RUN_SELECT = f"SELECT {_RUN.sql} FROM runs"
_RUN_FINISH = "UPDATE runs SET finished_at_s = ?, status = ?, result_json = ?, model_key = ? WHERE run_id = ?"
_RUN_INSERT = (
    "INSERT INTO runs(run_id, host, model_key, name, params_json, started_at_s, status) "
    "VALUES (?, ?, ?, ?, ?, ?, 'running')"
)
# A plain INSERT: the primary key (run_id, trial_index) refuses a second row, never replaces the first.
_TRIAL_INSERT = "INSERT INTO trials(run_id, trial_index, trial_json, recorded_at_s) VALUES (?, ?, ?, ?)"
# What history() reads of a run: enough to rebuild an unfinished run from its trials and parameters.
_HISTORY_SELECT = (
    "SELECT run_id, host, model_key, name, params_json, started_at_s, status, result_json FROM runs"
)


class ProfileRepository:
    """Characterization runs, their trials, and the device-model profiles derived from them.

    Args:
        db: The store's open database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- writing runs ---------------------------------------------------------------------------------
    def begin_run(
        self,
        *,
        host: str,
        model_key: str | None,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """Record the start of a characterization run; return its run id."""
        run_id = uuid.uuid4().hex
        with self._db.write() as conn:
            conn.execute(
                _RUN_INSERT,
                (run_id, host, model_key, name, canonical_json(dict(params or {})), time.time()),
            )
        log.debug("store.run_started", run_id=run_id, host=host, model_key=model_key)
        return run_id

    def record_trial(self, run_id: str, trial: TrialResult) -> None:
        """Write one trial, in its own transaction (call it the moment the trial ends, or is cut short).

        Raises:
            StoreError: The run already has a different trial with this index (stored trials are never
                overwritten; give a redone trial a new index).
        """
        with self._db.write() as conn:
            _write_trials(conn, run_id, (trial,))
        log.debug("store.trial_recorded", run_id=run_id, trial=trial.index, complete=trial.complete)

    def finish_run(
        self, run_id: str, characterization: Characterization, *, status: str = "complete"
    ) -> None:
        """Store the run's final characterization and mark it finished (its trials, too, in one go)."""
        with self._db.write() as conn:
            _write_trials(conn, run_id, characterization.trials)
            conn.execute(
                _RUN_FINISH,
                (time.time(), status, characterization.to_json(), characterization.model_key, run_id),
            )

    def save(self, characterization: Characterization, *, status: str = "complete") -> str:
        """Store a finished characterization in one transaction; return its run id.

        If the characterization carries a ``run_id`` already in the store, that run is finished (updated)
        instead of a new one being added.

        Raises:
            StoreError: A trial of it would overwrite a different stored trial of that run.
        """
        with self._db.write() as conn:
            return _save(conn, characterization, status)

    def add_new(self, characterizations: Iterable[Characterization]) -> int:
        """Store, in one transaction, those whose run id is not stored yet; return how many were added."""
        added = 0
        with self._db.write() as conn:  # all or nothing
            for char in characterizations:
                if (
                    char.run_id is not None
                    and conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (char.run_id,)).fetchone()
                ):
                    continue
                _save(conn, char, char.stop_reason)
                added += 1
        return added

    def mark_run(self, run_id: str, status: str) -> None:
        """Change a run's status without finishing it (e.g. ``interrupted``)."""
        with self._db.write() as conn:
            conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    # --- reading runs ---------------------------------------------------------------------------------
    def unfinished_run(self, *, host: str, model_key: str | None) -> RunRow | None:
        """The most recent run for this host and model that never finished (for resume), or None."""
        rows = self._db.query(
            _RUN_SELECT + " WHERE host = ? AND model_key IS ? AND finished_at_s IS NULL "
            "ORDER BY started_at_s DESC LIMIT 1",
            (host, model_key),
        )
        return self._run_row(rows[0]) if rows else None

    def run(self, run_id: str) -> RunRow | None:
        """One run with its stored trials, or None."""
        rows = self._db.query(_RUN_SELECT + " WHERE run_id = ?", (run_id,))
        return self._run_row(rows[0]) if rows else None

    def runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        return [self._run_row(r) for r in self._db.query(_RUN_SELECT + " ORDER BY started_at_s")]

    def trials(self, run_id: str) -> tuple[TrialResult, ...]:
        """The trials stored for a run, in order."""
        rows = self._db.query(
            "SELECT trial_json FROM trials WHERE run_id = ? ORDER BY trial_index", (run_id,)
        )
        return tuple(TrialResult.from_dict(json.loads(r[0])) for r in rows)

    def _run_row(self, row: tuple[Any, ...]) -> RunRow:
        return _RUN.decode(row, trials=self.trials(row[0]))

    # --- profiles -------------------------------------------------------------------------------------
    def history(self, model_key: str | None = None, *, unfinished: bool = False) -> list[Characterization]:
        """Stored characterizations (of one model, or all), oldest first, each derived again from its trials.

        A finished run's record is merged with every trial row stored for it and its ceiling derived again
        (never read from the record), so a ceiling stored by an older fragileprobe cannot outlive its
        evidence.

        Args:
            model_key: Only this model's runs (None: every run).
            unfinished: Also the runs that never finished (interrupted, or stopped by a failed recovery and
                never resumed), built from their stored trials and parameters, ``stop_reason`` = their status.
        """
        conditions = [] if unfinished else ["result_json IS NOT NULL"]
        args: tuple[Any, ...] = ()
        if model_key is not None:
            conditions.append("model_key = ?")
            args = (model_key,)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._db.query(_HISTORY_SELECT + where + " ORDER BY started_at_s", args)
        chars = [self._characterization(row) for row in rows]
        return [c for c in chars if c is not None]

    def _characterization(self, row: tuple[Any, ...]) -> Characterization | None:
        run_id, host, model_key, name, params_json, started_at_s, status, result_json = row
        stored = self.trials(run_id)
        if result_json is not None:
            char = Characterization.from_json(result_json)
            # Rows the record lacks (e.g. a partial trial dropped by an older resume) are evidence too.
            known = {t.index for t in char.trials}
            extra = [t for t in stored if t.index not in known]
            return char.rederived(sorted([*char.trials, *extra], key=lambda t: t.index))
        if not stored:
            return None  # a run that never finished a trial: nothing observed
        params = json.loads(params_json)
        early = params.get("early_warning")
        return Characterization.from_trials(
            host=host,
            model_key=model_key,
            name=name,
            ladder=tuple(params.get("ladder", ())),
            trials=stored,
            margin_fraction=float(params.get("margin_fraction", DEFAULT_MARGIN_FRACTION)),
            margin_levels=int(params.get("margin_levels", DEFAULT_MARGIN_LEVELS)),
            early_warning_factor=early.get("latency_factor") if isinstance(early, dict) else None,
            wall_time_s=sum(t.wall_time_s for t in stored),
            stop_reason=status,
            run_id=run_id,
            started_at_epoch_s=started_at_s,
        )

    def profile(self, model_key: str) -> DeviceProfile | None:
        """The profile of one model: every stored run of it, finished or not, or None if there is none."""
        chars = self.history(model_key, unfinished=True)
        return DeviceProfile(model_key=model_key, characterizations=tuple(chars)) if chars else None

    def profiles(self) -> list[DeviceProfile]:
        """Every model's profile (every stored run, finished or not), sorted by model key."""
        by_model: dict[str, list[Characterization]] = {}
        for char in self.history(unfinished=True):
            if char.model_key is not None:
                by_model.setdefault(char.model_key, []).append(char)
        return [DeviceProfile(model_key=k, characterizations=tuple(v)) for k, v in sorted(by_model.items())]

    def ceiling_for(self, model_key: str) -> int | None:
        """The model's safe ceiling, derived from every stored trial of it (see DeviceProfile), or None."""
        profile = self.profile(model_key)
        return profile.ceiling if profile is not None else None


def _write_trials(conn: Connection, run_id: str, trials: Iterable[TrialResult]) -> None:
    now = time.time()
    for trial in trials:
        data = trial.to_dict()
        old = conn.execute(
            "SELECT trial_json FROM trials WHERE run_id = ? AND trial_index = ?", (run_id, trial.index)
        ).fetchone()
        if old is not None:
            if json.loads(old[0]) == data:
                continue  # the same trial written again (finish_run after record_trial)
            raise StoreError(
                f"trial {trial.index} of run {run_id} is already stored with other observations; a "
                "stored trial is never overwritten (a redone trial is a new trial, with a new index)"
            )
        conn.execute(_TRIAL_INSERT, (run_id, trial.index, json.dumps(data), now))


def _save(conn: Connection, characterization: Characterization, status: str) -> str:
    run_id = characterization.run_id or uuid.uuid4().hex
    if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
        started = characterization.started_at_epoch_s or time.time()
        conn.execute(
            _RUN_INSERT,
            (run_id, characterization.host, characterization.model_key, characterization.name, "{}", started),
        )
    _write_trials(conn, run_id, characterization.trials)
    stored = (
        characterization
        if characterization.run_id == run_id
        else dataclasses.replace(characterization, run_id=run_id)
    )
    conn.execute(_RUN_FINISH, (time.time(), status, stored.to_json(), characterization.model_key, run_id))
    return run_id


def characterizations_from_export(text: str, *, schema_version: int) -> list[Characterization]:
    """The characterizations of an ``export_json`` document, each derived again from its own trials.

    Pure: no database. A document of the current format must state exactly what its trials derive; an
    older one was derived by an older margin rule, so it must only stay below what its trials allow.

    Args:
        text: The document.
        schema_version: The newest store schema this fragileprobe reads.

    Raises:
        ConfigError: The text is not an export document, is from a newer schema, or a characterization's
            stated ceiling disagrees with its own trials (the message names both values).
    """
    raw_chars = _export_entries(text, schema_version)
    chars: list[Characterization] = []
    for i, raw in enumerate(raw_chars):
        char = Characterization.from_dict(raw)
        fmt = raw.get("format", FORMAT_VERSION) if isinstance(raw, dict) else FORMAT_VERSION
        wrong = char.disagreements(exact=fmt == FORMAT_VERSION)
        if wrong:
            who = f"characterization {i} ({char.host}, run {char.run_id})"
            raise ConfigError(
                f"import_json: {who} disagrees with its own trials: {'; '.join(wrong)}; nothing was imported"
            )
        chars.append(char.rederived())
    return chars


def _export_entries(text: str, schema_version: int) -> list[Any]:
    """The raw ``characterizations`` list of an export document (its envelope checked)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"import_json: not JSON: {exc}") from exc
    if not isinstance(data, dict) or "characterizations" not in data:
        raise ConfigError("import_json: not a fragileprobe store export (no 'characterizations')")
    version = data.get("fragileprobe_store", schema_version)
    if not isinstance(version, int) or version > schema_version:
        raise ConfigError(f"import_json: export schema {version!r} is newer than {schema_version}")
    entries = data["characterizations"]
    if not isinstance(entries, list):
        raise ConfigError("import_json: 'characterizations' must be a list")
    return entries

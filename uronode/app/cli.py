"""The ``uronode`` command line (the console script and ``python -m uronode``).

The commands that need the DICOM or HTTP side (``serve``, ``echo``) and the model's tools import
them when they run, so that ``uronode jobs`` or ``config`` starts without loading them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import sys
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from uronode import __version__, queries
from uronode.app import predict
from uronode.audit import AuditLog, operator_named
from uronode.db import (
    SCHEMA_VERSION,
    SIDE_FILES,
    Database,
    DataDirUnusable,
    IndexDamaged,
    index_version,
)
from uronode.errors import UronodeError
from uronode.files import PRIVATE_UMASK, keep_private
from uronode.jobs import LOCAL_WORKER, JobQueue
from uronode.logs import escape_controls, setup_logging
from uronode.outbox import DeliveryState, Outbox
from uronode.retention import purge, purge_study
from uronode.settings import (
    ConfigError,
    Settings,
    StorageSettings,
    check_ae_title,
    load_settings,
    model_folder,
    model_label,
    url_for_people,
)
from uronode.store import INDEX_FILE, REINDEX_UNFINISHED, Store
from uronode.supersede import findings_model
from uronode.types import JobState

log = logging.getLogger(__name__)

class NoNodeData(UronodeError):
    """An admin command was pointed at a folder that holds no node's data."""


def _settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None) is not None:
        overrides["host"] = args.host
    if getattr(args, "log_level", None) is not None:
        overrides["log_level"] = args.log_level
    scp: dict[str, Any] = {}
    if getattr(args, "dicom_port", None) is not None:
        scp["port"] = args.dicom_port
    if getattr(args, "ae_title", None) is not None:
        scp["ae_title"] = args.ae_title
    if scp:
        overrides["scp"] = scp
    if getattr(args, "http_port", None) is not None:
        overrides["dicomweb"] = {"port": args.http_port}
    if getattr(args, "data_dir", None) is not None:
        overrides["storage"] = {"data_dir": args.data_dir}
    named = os.environ.get("URONODE_CONFIG")
    if args.config is not None and named and Path(named).resolve() != Path(args.config).resolve():
        # probe 53: the flag won without a word, and the file the variable names looked ignored for no reason
        print(f"uronode: reading --config {args.config}, not URONODE_CONFIG={named}", file=sys.stderr)
    return load_settings(args.config, overrides)


def _existing_store(settings: Settings) -> Store:
    """The node's store, for the commands that read or change what a node holds (``jobs``, ``purge`` ...).

    Opening a :class:`Store` creates it: a mistyped ``--data-dir``, or a command run from the wrong
    folder without ``--config``, would get an empty store of its own and report nothing."""
    data_dir = settings.storage.data_dir
    if not _holds_node_data(data_dir):
        raise NoNodeData(_no_node_data(data_dir))
    return Store(data_dir, fsync=settings.storage.fsync, upgrade=False)  # serve upgrades an index, never these


def _holds_node_data(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a node's data: its index is there (a node made it at its first start)."""
    return (data_dir / INDEX_FILE).is_file()


def _no_node_data(data_dir: Path) -> str:
    return f"no node data in {data_dir.resolve()} (no {INDEX_FILE}); give --data-dir or --config"


SECRET_KEYS = frozenset({"password", "token", "tokens"})
"""The settings whose values are secrets, wherever they are (``dicomweb``, each destination)."""
MASK = "********"
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
"""A URL's ``user:password@`` (up to the authority's last ``@``), as in ``redis://:password@host``."""


def without_secrets(value: Any, key: str = "") -> Any:
    """The settings as JSON (``model_dump(mode="json")``) with every secret masked: passwords, tokens, the
    password in a URL (the Redis broker's) and a credential in a URL's query (a destination's
    ``?access_token=``). A secret that is set reads :data:`MASK` (one per token), so the output still says
    whether it is set; one that is not keeps its ``null`` or ``[]``.
    ``uronode config`` is pasted into tickets and chats, where a password must not go."""
    if isinstance(value, dict):
        return {name: without_secrets(item, name) for name, item in value.items()}
    if key in SECRET_KEYS and value:
        return [MASK for _ in value] if isinstance(value, list) else MASK
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    if isinstance(value, str):
        return url_for_people(_URL_USERINFO.sub(_masked_userinfo, value, count=1), MASK)
    return value


def _masked_userinfo(match: re.Match[str]) -> str:
    """``scheme://user:********@``; a user alone may be a token (``https://TOKEN@host``): masked whole."""
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def local_time(timestamp: float | None) -> str:
    """A time for an admin: local, to the second, with its offset from UTC (``2026-12-05T16:07:32+01:00``)."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _positive_days(text: str) -> float:
    """argparse type: a finite number of days greater than 0 (0 or less would purge what just arrived)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise argparse.ArgumentTypeError(f"must be a number of days greater than 0, not {text!r}")
    return days


def _port(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 1-65535, not {text!r}")
    return port


def _ae_title(text: str) -> str:
    """argparse type: a DICOM AE title, by the rule the settings apply to ``scp.ae_title``."""
    try:
        return check_ae_title(text, "AE title")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_count(text: str) -> int:
    """argparse type: a whole number greater than 0."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number greater than 0, not {text!r}")
    return count


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config`` after the subcommand too (``uronode serve --config F``; ``./run serve`` passes its flags
    there). Without a default, so that it leaves one given before the subcommand as it is."""
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help="TOML config file (also URONODE_CONFIG)")


def _add_limit_flag(parser: argparse.ArgumentParser, rows: str) -> None:
    parser.add_argument("--limit", type=_positive_count, default=50, metavar="N",
                        help=f"show the newest N {rows} (default 50); the output says when there are more")


def _say_cut(shown: int, rows: str, total: int | None, limit: int) -> None:
    """Tell the admin (on stderr: the table stays the rows) that the listing stopped at ``--limit``."""
    of = f" of {total}" if total is not None else ""
    print(f"showing the newest {shown}{of} {rows}; more with --limit (e.g. --limit {limit * 10})", file=sys.stderr)


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    _add_config_flag(parser)
    parser.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                        help="where instances, index and queue live (default uronode-data)")
    parser.add_argument("--host", help="address to listen on, DICOM and HTTP (default 0.0.0.0)")
    parser.add_argument("--dicom-port", type=int, help="DICOM port (default 11112)")
    parser.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    parser.add_argument("--ae-title", help="our AE title (default URONODE)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")


def cmd_serve(args: argparse.Namespace) -> int:
    from uronode.app.node import serve

    settings = _settings_from_args(args)
    setup_logging(settings.log_level)
    serve(settings)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    settings.scp.ssl_context()  # what serve refuses, config does (review 51: a key with a passphrase passed here)
    shown = settings.model_dump(mode="json")
    # the values in effect where a setting left empty is derived from others (probe 54: null read as "none")
    shown["scp"]["max_associations_per_host"] = settings.scp.host_share()
    shown["queue"]["worker_tokens_file"] = str(settings.queue.tokens_file(settings.storage.data_dir))
    print(json.dumps(shown if args.show_secrets else without_secrets(shown), indent=2))
    for caution in settings.cautions():
        print(f"caution: {caution}", file=sys.stderr)
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from scp.scu import echo

    # the node's own AE title unless told (a PACS that checks its callers knows the node by it); not through
    # _settings_from_args: echo's host and port are the peer's, not the node's
    calling_ae = args.calling_ae if args.calling_ae is not None else load_settings(args.config).scp.ae_title
    result = echo(args.host, args.port, args.called_ae, calling_ae=calling_ae, timeout_s=args.timeout)
    print(result.message)
    return 0 if result.ok else 1


T = TypeVar("T")


def _newest(rows: list[T], limit: int) -> tuple[list[T], bool]:
    """``rows`` as listed, newest first and one more than ``limit`` asked for: the ``limit`` shown and
    whether any were left out."""
    return rows[:limit], len(rows) > limit


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    store = _existing_store(settings)
    queue = JobQueue(store)
    state = JobState(args.state) if args.state else None
    jobs, cut = _newest(queue.list(state, args.limit + 1), args.limit)
    # worker: 'local:<pid>' (one of the node's own worker processes; 'local' in older rows) or a remote worker's name
    # ct: the CT series' number and description, as a PACS lists it (probe 22: a UID alone named no series)
    # changed: when the job last changed state (local time, with its offset from UTC)
    # model: the model the job is for, and the version it ran with once it has (probe 43: `default` alone did not
    # tell the runs of two releases apart)
    print(f"{'id':>6}  {'state':<10} {'tries':>5}  {'worker':<14} {'model':<16} {'ct':<24} {'series':<64}"
          f"  {'changed':<25}  reason")
    for job in jobs:
        print(f"{job.id:>6}  {job.state:<10} {job.attempts:>5}  {job.claimed_by or '':<14}"
              f" {_job_model(job.model, queue.findings(job.id)):<16}"
              f" {_ct_label(store, job.series_instance_uid):<24} {job.series_instance_uid:<64}"
              f"  {local_time(job.updated_at):<25}  {job.reason or _superseded(store, job.id, job.series_instance_uid)}"
              f"{_waiting_on(store, job.id) if job.state is JobState.DELIVERING and not job.reason else ''}")
    if cut:
        _say_cut(len(jobs), f"{args.state or ''} jobs".strip(), None, args.limit)
    return 0


def _job_model(model: str, findings: str | None) -> str:
    """A job's model for `uronode jobs`: its name, and the version its findings name once it has run."""
    ran = findings_model(findings)
    return f"{model} {ran.rsplit(' ', 1)[-1]}" if ran else model


def cmd_study(args: argparse.Namespace) -> int:
    """From what a radiologist names (an Accession Number, a Patient ID) or a Study Instance UID to what the node
    did with each series of the study: received, analysed, skipped and why, its jobs and where their results went
    (probe 41: `uronode jobs` listed UIDs only, skipped series were in no command)."""
    settings = _settings_from_args(args)
    store = _existing_store(settings)
    named = ({"study": args.study} if args.study is not None else {"accession": args.accession}
             if args.accession is not None else {"patient_id": args.patient_id})
    studies, more = queries.study_overview(store.db, **named)
    # who looked up whom (probe 51): a Patient ID or Accession Number named here is in the trail, as in a search's
    AuditLog(store.root).record("study_looked_up", **named, studies=len(studies))
    if more:
        print(f"uronode: more than {queries.STUDIES_AT_MOST} studies match; the {queries.STUDIES_AT_MOST} newest are"
              " shown (name one by --study)", file=sys.stderr)
    if not studies:
        what = {"study": "study_instance_uid", "accession": "accession_number", "patient_id": "patient_id"}
        print(f"uronode: the node holds no study with that {what[next(iter(named))]} (received studies only; retention"
              " may have removed it)", file=sys.stderr)
        return 1
    for study in studies:
        print(escape_controls(f"study {study['study_instance_uid']}  accession {study['accession_number'] or '-'}"
                              f"  date {study['study_date'] or '-'}"))
        for series in study["series"]:
            number = series["series_number"] if series["series_number"] is not None else "-"
            # a series for the model says so, its jobs below say how far they are (probe 46: "queued" beside a
            # delivered job read as still waiting)
            disposition = "for the model" if series["disposition"] == "queued" else series["disposition"]
            status = (series["state"] if series["state"] != "complete"
                      else f"{disposition or 'complete'}" + (f": {series['reason']}" if series["reason"] else ""))
            print(escape_controls(f"  series #{number} {series['modality'] or '?'} {series['series_description'] or ''!r}"
                                  f" ({series['instances']} instances, last {local_time(series['last_received_at'])}):"
                                  f" {status}"))
            for job in series["jobs"]:
                sent = ", ".join(f"{r['destination']} {r['state']} {r['instances']}" for r in job["results"])
                print(escape_controls(f"    job {job['id']} {job['state']} ({job['model']}, "
                                      f"{local_time(job['updated_at'])})" + (f": {job['reason']}" if job["reason"] else "")
                                      + (f"; results: {sent}" if sent else "")))
    return 0


def _waiting_on(store: Store, job_id: int) -> str:
    """What a delivering job waits for: "waiting for pacs (3, tried 4 times: cannot connect ...)" per destination
    with results still pending (probe 41: its reason was empty while the PACS was down)."""
    rows = store.conn().execute(
        "SELECT destination, count(*) AS n, max(attempts) AS tries, (SELECT d2.last_error FROM deliveries d2"
        " WHERE d2.job_id = d.job_id AND d2.destination = d.destination AND d2.state = 'pending'"
        " AND d2.last_error IS NOT NULL ORDER BY d2.updated_at DESC LIMIT 1) AS error FROM deliveries d"
        " WHERE job_id = ? AND state = 'pending' GROUP BY destination ORDER BY destination", (job_id,)).fetchall()
    said = "; ".join(f"waiting for {r['destination']} ({r['n']}" + (f", tried {r['tries']} times: {r['error']}"
                                                                    if r["error"] else "") + ")" for r in rows)
    held = rows and store.conn().execute(
        "SELECT 1 FROM jobs j JOIN series s ON s.series_instance_uid = j.series_instance_uid"
        " WHERE j.id = ? AND s.identity_changed = 1", (job_id,)).fetchone()
    # review 40: results held back for a correction read as waiting for the PACS
    return said + ("; held: an image of the series came again naming another patient or order, its results are"
                   " withdrawn when the series is complete" if held else "")


def _ct_label(store: Store, series_uid: str) -> str:
    """"#3 KUB 5.0mm": the series' number and description, cut to the column; "" for a series the index lacks."""
    row = store.conn().execute("SELECT series_number, series_description FROM series WHERE series_instance_uid = ?",
                               (series_uid,)).fetchone()
    if row is None:
        return ""
    number = f"#{row['series_number']}" if row["series_number"] is not None else "#-"
    label = f"{number} {row['series_description'] or ''}".strip()
    return label if len(label) <= 24 else label[:23] + "…"


def _superseded(store: Store, job_id: int, series_uid: str) -> str:
    """"results superseded by job N" for a job whose results a later run replaced (probe 22), else ""."""
    from uronode.supersede import superseded_by

    later = superseded_by(store.conn(), job_id, series_uid, JobQueue(store).findings(job_id))
    return f"results superseded by job {later}" if later is not None else ""


def cmd_retry(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    outbox = Outbox(_existing_store(settings))
    # what the destinations as now configured do not want is not sent again (probe 41: a destination's results
    # narrowed, its dead letters were sent again and died again, their job failed for good)
    if settings.delivery.destinations:
        for why, dropped in outbox.drop_unwanted(settings.delivery.destinations).items():
            print(f"{dropped} result(s) no longer owed: {why}")
    else:  # most likely run without the node's configuration: nothing is dropped on its word
        print("this configuration names no destination (run with the node's --config to drop what its destinations"
              " no longer want)")
    count = outbox.retry(destination=args.destination, job_id=args.job)
    print(f"{count} dead letter(s) queued for delivery again")
    AuditLog(outbox.store.root).record("deliveries_retried", count=count, destination=args.destination,
                                                     job_id=args.job)
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    store = _existing_store(settings)
    outbox = Outbox(store)
    state = DeliveryState(args.state) if args.state else None
    counts = outbox.counts()
    total = counts.get(state.value, 0) if state is not None else sum(counts.values())
    # newest first, as `jobs`: today's dead letters before last year's deliveries
    deliveries, cut = _newest(outbox.list(state, args.limit + 1, newest_first=True), args.limit)
    changed = _deliveries_changed(store, [d.id for d in deliveries])
    # changed: when the delivery last changed (local time, with its offset); next try: a pending one's
    print(f"{'id':>6}  {'state':<9} {'tries':>5}  {'destination':<12} {'instance':<64}  {'changed':<25}"
          f"  {'next try':<25}  last error")
    for d in deliveries:
        upcoming = local_time(d.next_attempt_at) if d.state == DeliveryState.PENDING else ""
        print(f"{d.id:>6}  {d.state:<9} {d.attempts:>5}  {d.destination:<12} {d.sop_instance_uid:<64}"
              f"  {local_time(changed.get(d.id)):<25}  {upcoming:<25}  {d.last_error or ''}")
    if cut:
        _say_cut(len(deliveries), f"{args.state or ''} deliveries".strip(), total, args.limit)
    return 0


def _deliveries_changed(store: Store, ids: list[int]) -> dict[int, float]:
    """When each of these deliveries last changed (``updated_at``, which :class:`uronode.outbox.Delivery` does not
    carry)."""
    if not ids:
        return {}
    rows = store.conn().execute(
        f"SELECT id, updated_at FROM deliveries WHERE id IN ({', '.join('?' * len(ids))})", ids
    ).fetchall()
    return {int(row["id"]): float(row["updated_at"]) for row in rows}


def cmd_purge(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    store = _existing_store(settings)  # first: without --config, the retention is missing too
    if elsewhere := store.rows_elsewhere():
        # a folder moved or restored from elsewhere, its index not yet pointed here by the node's start-up:
        # a purge would delete the files of the old place (the original of a copy) and leave these
        print(f"uronode: the index names {elsewhere} file(s) outside {store.root}: the data folder was moved or"
              " restored from elsewhere; start the node on it once (its start-up points the index here),"
              " then purge", file=sys.stderr)
        return 2
    if args.study is not None:
        return _purge_study(store, args.study, dry_run=args.dry_run)
    days = args.older_than_days if args.older_than_days is not None else settings.storage.retention_days
    if days is None:
        print("uronode: no retention set: give --older-than-days or storage.retention_days", file=sys.stderr)
        return 2
    done = purge(store, days, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(done.series)} series, {done.instances} instances, {done.bytes / 1e6:.1f} MB"
          f" received more than {days:g} days ago, with the {done.results} result instance(s)"
          f" ({done.results_bytes / 1e6:.1f} MB) the node made of them")
    print(f"{verb} the history that ended before then: {done.jobs} job(s), {done.deliveries} deliveries,"
          f" {done.associations} association(s)"
          + (f", and {done.set_aside} file(s) uronode reindex set aside before then" if done.set_aside else ""))
    for series in done.series:
        print(f"  {series}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the index from the instance files (docs/operations.md, "A damaged or lost index")."""
    # the serve side's lock: a running node's folder is refused
    from uronode.app.node import hold_data_dir, port_free

    settings = _settings_from_args(args)
    root = settings.storage.data_dir.resolve()
    instances = root / "instances"
    if not instances.is_dir():
        raise NoNodeData(f"no node data in {root} (no instances/ folder); give --data-dir or --config")
    version = index_version(root / INDEX_FILE)
    if version is not None and 0 < version < SCHEMA_VERSION:
        # an earlier version takes no lock on its folder: its ports say whether it runs (probe 49: its index was
        # brought up to date under it, and it refused every image after)
        for port, what in ((settings.scp.port, "DICOM"), (settings.dicomweb.port, "HTTP")):
            try:
                port_free(settings.host, port, what)
            except OSError as exc:
                raise DataDirUnusable(f"the index of {root} is an earlier uronode's (schema {version}), which takes"
                                      f" no lock on its folder, and the node's {what} port {port} answers"
                                      f" ({exc.strerror or exc}): stop that node first (or, where another service"
                                      " holds the port, give --config with this folder's node settings)") from exc
    held = hold_data_dir(root)
    keep_private(root)  # a folder restored open to every account (probe 51: cp -r, 0755)
    try:
        # from the first change to the end: a start refuses a half-made index (review 48); a refusal before any
        # change (review 49: an index of a newer version) leaves none
        marker = root / REINDEX_UNFINISHED
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        index = root / INDEX_FILE
        why = _index_unusable(root, settings)
        kept: list[Path] = []
        if why is not None:  # lost, empty or damaged: set aside whole, never deleted, and a new one made
            _mark_unfinished(marker)
            for side in ("", *SIDE_FILES):
                if (old := Path(f"{index}{side}")).exists():
                    os.replace(old, kept_as := Path(f"{index}.before-reindex-{stamp}{side}"))
                    kept.append(kept_as)
            print(f"the index was {why}" + (f"; kept as {', '.join(k.name for k in kept)}" if kept else "")
                  + "; a new one is made")
        store = Store(root, fsync=settings.storage.fsync, rebuilding=True)  # an earlier schema brought up to date
        _mark_unfinished(marker)
        if why is None and (behind := store.behind()) is not None:
            print(f"the index is older than its data folder (it has taken {behind[0]} instance(s), the node saw it"
                  f" take {behind[1]}: its -wal lost, or a backup restored); the files it does not name are added")
        # rows that name the files of the place a copy was restored from are pointed here first, so that each is
        # judged by its file here (probe 49: an image replaced after the backup was skipped, and later removed)
        store.relocate()
        aside = root / f"unindexed-{stamp}"
        done = store.adopt_files(aside, progress=lambda n, of: print(f"  {n} of {of} file(s) gone through",
                                                                    flush=True))
        store.settle_seen()
        first_job = _number_jobs_above(store, max([AuditLog(root).highest_job_id(),
                                                   *(_highest_job_id(k) for k in kept[:1])]))
        AuditLog(root).record("index_rebuilt", replaced=why, instances=done.instances, series=done.series,
                              moved=done.moved, older_copies=done.older_copies, unreadable=len(done.unreadable),
                              first_job=first_job)
        marker.unlink()
    finally:
        if held is not None:
            os.close(held)
    print(f"indexed {done.instances} instance file(s) the index did not name, in {done.series} new series"
          " (complete, not analysed: upload a series to have it analysed; the same images sent again are"
          " duplicates)" + (f"; {done.moved} of them moved to where the node keeps them" if done.moved else ""))
    if first_job is not None:
        print(f"the next job is number {first_job}: above every job number the audit log or the earlier index"
              " names, so that none is given twice")
    if done.older_copies or done.unreadable:
        print(f"moved to {aside}: {done.older_copies} older copies of instances whose newer file is indexed,"
              f" {len(done.unreadable)} file(s) that could not be read as DICOM")
        for line in done.unreadable[:20]:
            print(f"  {line}")
    return 0


def _mark_unfinished(marker: Path) -> None:
    if not marker.exists():
        marker.write_text(f"uronode reindex started {datetime.now().isoformat(timespec='seconds')}\n")


JOB_NUMBER_MARGIN = 1000
"""How far above the highest job number the audit trail or an earlier index names a rebuilt index's jobs begin:
a job made just before the loss may have left no trace in either."""


def _highest_job_id(index: Path) -> int:
    """The highest job number an earlier (perhaps damaged) index names, read only; 0 where it cannot be read."""
    try:
        conn = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'jobs'"
                                ).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def _number_jobs_above(store: Store, highest: int) -> int | None:
    """Make the index's next job number greater than ``highest`` (by :data:`JOB_NUMBER_MARGIN`) where it is not;
    the next number, or None where the index's own was higher already (review 48: a rebuilt index gave job 1 to
    another patient's series, and an upload page that followed #jobs=1 showed that patient)."""
    with store.transaction() as tx:
        (own,) = tx.execute("SELECT max(coalesce((SELECT max(seq) FROM sqlite_sequence WHERE name = 'jobs'), 0),"
                            " coalesce((SELECT max(id) FROM jobs), 0))").fetchone()
        if highest <= own:  # the index's own numbers are past the others' (or none names any)
            return None
        tx.execute("DELETE FROM sqlite_sequence WHERE name = 'jobs'")
        tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (highest + JOB_NUMBER_MARGIN,))
    return highest + JOB_NUMBER_MARGIN + 1


def _index_unusable(root: Path, settings: Settings) -> str | None:
    """Why the index of ``root`` cannot be kept (missing, empty, damaged), or None where it opens and SQLite's
    quick check finds it sound (the files it does not name are then added to it)."""
    version = index_version(root / INDEX_FILE)
    if version is None:
        return "missing"
    if version == 0:
        return "empty (its -wal, which held it, may be gone)"
    try:
        Database(root / INDEX_FILE, durable=settings.storage.fsync).check()
    except IndexDamaged as exc:
        return f"damaged ({exc.problem})"
    return None


def _purge_study(store: Store, study: str, *, dry_run: bool) -> int:
    try:
        done = purge_study(store, study, dry_run=dry_run)
    except ValueError as exc:  # StudyBusy too: what is still going on
        print(f"uronode: {exc}", file=sys.stderr)
        return 1
    print(f"{'would delete' if dry_run else 'deleted'} study {study}: {len(done.series)} series, {done.instances}"
          f" instances, {done.bytes / 1e6:.1f} MB, with the {done.results} result instance(s)"
          f" ({done.results_bytes / 1e6:.1f} MB) the node made of it and {done.notes} rejection note(s)"
          + (f"; and {done.set_aside} file(s) of it that uronode reindex set aside" if done.set_aside else ""))
    for series in done.series:
        print(f"  {series}")
    if done.earlier_indexes:
        print(f"the earlier index(es) uronode reindex kept ({', '.join(done.earlier_indexes)}, in {store.root}) may"
              " still name this study's patient, and no purge edits them: delete them (with their -wal and -shm)"
              " once the rebuilt index serves, or keep them only as long as the erasure allows")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    queue = JobQueue(_existing_store(settings))
    try:
        queue.requeue(args.job)
    except ValueError as exc:
        print(f"uronode: {exc}", file=sys.stderr)
        return 1
    AuditLog(queue.store.root).record("job_requeued", job_id=args.job)  # probe 41: retry and requeue went unrecorded
    print(f"job {args.job} queued again; a running node's worker takes it")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    queue = JobQueue(_existing_store(settings))
    before = queue.get(args.job)
    try:
        job = queue.cancel(args.job, args.reason or "")
    except ValueError as exc:
        print(f"uronode: {exc}", file=sys.stderr)
        return 1
    running = before is not None and before.state is JobState.RUNNING
    worker = before.claimed_by if before is not None and before.claimed_by else ""
    what = ("stops its computation within about a second (a new worker process takes its place)"
            if worker.startswith(f"{LOCAL_WORKER}:") else "drops what it makes of it")
    delivering = before is not None and before.state is JobState.DELIVERING
    print(f"job {args.job} cancelled ({job.reason})"
          + (f"; its worker ({worker}) {what}" if running else "")
          + ("; what was still owed of its results is not sent (`uronode deliveries`)" if delivering else "")
          + f"; `uronode requeue {args.job}` runs it again")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    setup_logging(settings.log_level)
    lines = args.token_file.read_text().split()
    if not lines:
        print(f"uronode: the token file {args.token_file} is empty", file=sys.stderr)
        return 2
    if importlib.util.find_spec("dramatiq") is None:
        print("uronode: a remote worker needs Dramatiq: pip install 'uronode[distributed]'", file=sys.stderr)
        return 2
    from uronode.app.remote import run_remote_worker

    run_remote_worker(settings, args.node, lines[0])
    return 0


def cmd_worker_token(args: argparse.Namespace) -> int:
    from uronode.claims import check_worker_name, new_worker_token

    settings = _settings_from_args(args)
    data_dir = settings.storage.data_dir
    tokens_file = settings.queue.tokens_file(data_dir)
    try:
        check_worker_name(args.name)
    except ValueError as exc:
        print(f"uronode: {exc}", file=sys.stderr)
        return 2
    if not _holds_node_data(data_dir) and settings.queue.worker_tokens_file is None:
        if args.data_dir is None and data_dir == StorageSettings.model_fields["data_dir"].default:
            # the default folder, relative to where the command runs: from anywhere but the node's folder the
            # hash would go to a tokens file no node reads, and the worker be refused (401)
            raise NoNodeData(f"no node data in {data_dir.resolve()} (no {INDEX_FILE}), and the token's hash must go"
                             " to the tokens file of the node that is to accept it: give the node's --data-dir"
                             " (or --config)")
        print(f"uronode: note: {data_dir.resolve()} holds no node's data yet; the node accepts this worker once it"
              " runs with that data folder", file=sys.stderr)
    # the token is written to a file of its own first, its hash recorded next, and only then does that file
    # replace --out: a failure never touches a file already at --out nor leaves a hash of a token nobody has
    out = Path(args.out)
    if out.is_dir():
        print(f"uronode: --out {out} is a folder, not a file", file=sys.stderr)
        return 2
    staged = out.with_name(f".{out.name}.new")
    token = secrets.token_urlsafe(32)
    try:
        with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(token + "\n")
        new_worker_token(tokens_file, args.name, token)
        os.replace(staged, out)
    except ValueError as exc:  # a name the tokens file holds already
        print(f"uronode: {exc}", file=sys.stderr)
        return 2
    finally:
        staged.unlink(missing_ok=True)
    print(f"worker {args.name}: token in {args.out} (for `uronode worker --token-file`), its hash added to {tokens_file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uronode", description="DICOM AI node for urinary stones in CT")
    parser.add_argument("--version", action="version",
                        version=f"uronode {__version__} (shipped model: {model_label(model_folder(None)) or 'none'})")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file (also URONODE_CONFIG); after the subcommand too")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="the node's data folder, for the commands that take one; after the subcommand too")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node: DICOM listener, HTTP server, workers")
    _add_node_flags(serve)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="print the effective settings as JSON (secrets masked)")
    _add_node_flags(config)
    config.add_argument("--show-secrets", action="store_true",
                        help="print passwords, tokens and the password in a URL as they are (masked by default)")
    config.set_defaults(func=cmd_config)

    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    echo.add_argument("host")
    echo.add_argument("port", type=_port)
    echo.add_argument("called_ae", metavar="AE", type=_ae_title)
    echo.add_argument("--calling-ae", type=_ae_title, help="our AE title in the request (default: scp.ae_title)")
    echo.add_argument("--timeout", type=float, default=10.0)
    _add_config_flag(echo)
    echo.set_defaults(func=cmd_echo)

    jobs = sub.add_parser("jobs", help="list jobs and their states")
    _add_config_flag(jobs)
    jobs.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    jobs.add_argument("--state", choices=["queued", "running", "delivering", "delivered", "failed"])
    _add_limit_flag(jobs, "jobs")
    jobs.set_defaults(func=cmd_jobs)

    study = sub.add_parser("study", help="what the node did with each series of a study: from an Accession Number,"
                                         " a Patient ID or a Study Instance UID to its jobs and deliveries")
    _add_config_flag(study)
    study.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    named = study.add_mutually_exclusive_group(required=True)
    named.add_argument("--accession", help="the study's Accession Number")
    named.add_argument("--patient-id", help="the patient's ID: each of the patient's studies")
    named.add_argument("--study", help="the Study Instance UID")
    study.set_defaults(func=cmd_study)

    retry = sub.add_parser("retry", help="send dead-letter deliveries again")
    _add_config_flag(retry)
    retry.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    retry.add_argument("--destination", help="only this destination")
    retry.add_argument("--job", type=int, help="only this job's results")
    retry.set_defaults(func=cmd_retry)

    deliveries = sub.add_parser("deliveries", help="list result deliveries and their states")
    _add_config_flag(deliveries)
    deliveries.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    deliveries.add_argument("--state", choices=[s.value for s in DeliveryState])
    _add_limit_flag(deliveries, "deliveries")
    deliveries.set_defaults(func=cmd_deliveries)

    reindex = sub.add_parser("reindex", help="rebuild the index from the instance files (a lost or damaged index,"
                                           " or one restored from a backup older than the files); the node stopped")
    _add_config_flag(reindex)
    reindex.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    reindex.set_defaults(func=cmd_reindex)
    purge = sub.add_parser("purge", help="delete received series past their retention, with the results made of them,"
                                       " and the history (jobs, deliveries, associations) that ended before then")
    _add_config_flag(purge)
    purge.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    which = purge.add_mutually_exclusive_group()
    which.add_argument("--older-than-days", type=_positive_days, metavar="DAYS",
                       help="a number greater than 0 (default: storage.retention_days)")
    which.add_argument("--study", metavar="UID",
                       help="delete this one study now, whatever its age, with the results made of it (a study the"
                            " PACS deleted or merged, an erasure request); refused while it is being received, a job of"
                            " it is queued, running or delivering, or results of it are still owed to a destination"
                            " (`uronode cancel` first)")
    purge.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    purge.set_defaults(func=cmd_purge)

    requeue = sub.add_parser("requeue", help="run a failed (or delivered) job again")
    requeue.add_argument("job", type=int)
    _add_config_flag(requeue)
    requeue.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    requeue.set_defaults(func=cmd_requeue)

    cancel = sub.add_parser("cancel", help="cancel a queued, running or delivering job: it fails, nothing more of it"
                                           " is stored or sent (a running one's worker drops its outcome)")
    cancel.add_argument("job", type=int)
    cancel.add_argument("--reason", help="the operator's words, kept with the job's reason")
    _add_config_flag(cancel)
    cancel.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    cancel.set_defaults(func=cmd_cancel)
    worker = sub.add_parser("worker", help="a model worker for a node, on any machine (queue.backend dramatiq)")
    worker.add_argument("--node", required=True, help="the node's HTTP address, e.g. http://node:8080")
    worker.add_argument("--token-file", type=Path, required=True, help="this worker's bearer token (first line)")
    worker.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    _add_config_flag(worker)
    worker.set_defaults(func=cmd_worker)

    worker_token = sub.add_parser("worker-token", help="make a remote worker's token; the node keeps its hash")
    worker_token.add_argument("name", help="the worker's name (in the node's logs, jobs and metrics)")
    worker_token.add_argument("--out", type=Path, required=True, help="file for the token (mode 600)")
    worker_token.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                              help="the node's data folder, whose worker-tokens gets the hash (default uronode-data,"
                                   " which must then hold the node's index)")
    _add_config_flag(worker_token)
    worker_token.set_defaults(func=cmd_worker_token)

    predict.register(sub)
    # the model lab's commands (synth, train, evaluate, experiment); an install may leave the lab out
    if importlib.util.find_spec("lab") is not None:
        from lab import cli as lab_cli

        lab_cli.register(sub)
    return parser


def _takes_data_dir(parser: argparse.ArgumentParser, command: str) -> bool:
    """Whether the subcommand has a ``--data-dir`` of its own (the top-level one is passed on to it)."""
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "--data-dir" in subcommands.choices[command]._option_string_actions


LAB_COMMANDS = frozenset({"synth", "train", "evaluate", "compare", "choose", "fetch-stone-free", "soup", "experiment"})
"""The model's tools: what they write (models, figures, generated series, public data) holds no patient data."""
NODE_COMMANDS = ("serve", "worker")
"""The commands that run the node or a worker: their audit events are the node's, where every other command's name
the operator who ran it."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) is not None and not _takes_data_dir(parser, args.command):
        parser.error(f"--data-dir does not apply to {args.command}")  # not silently ignored
    # what a command makes of patient data (an index, folders, results) is its user's and group's alone (probe 51);
    # a model, a figure or a generated series keeps the caller's umask, so that a node under another account can
    # load a model trained here (review 50)
    umask = os.umask(PRIVATE_UMASK) if args.command not in LAB_COMMANDS else None
    try:
        with operator_named() if args.command not in NODE_COMMANDS else nullcontext():
            return int(args.func(args))
    except (ConfigError, UronodeError) as exc:  # each carries a sentence for a person, no traceback needed
        print(f"uronode: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `uronode jobs | head`: the reader has what it wanted; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"uronode: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # the index failed after it was opened (locked for longer than its busy timeout)
        print(f"uronode: the node's index could not be read or written: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if umask is not None:
            os.umask(umask)  # called inside another program (a test, a script), it leaves that program's umask as it was


if __name__ == "__main__":
    sys.exit(main())

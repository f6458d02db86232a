"""Delivery: takes what the outbox owes and sends it, one association per destination and round.

The destinations of a round are served side by side, each in its own thread, so one that hangs (a
tar-pit, an archive slow to answer) delays only its own results; the round ends when every one is
done.

The outbox (core) records what each destination is owed; the clients (services) send:
:func:`scp.sender.store_files` for ``dicom`` and ``sender`` destinations, :func:`dicomweb.stow_client.stow`
for ``dicomweb`` ones. This module, in the app, picks the client by the destination's kind. The
node calls :meth:`Deliverer.run_once` as its ``delivery`` loop (:mod:`uronode.loops`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from functools import partial

from dicomweb.stow_client import StowResult, stow
from scp.sender import Outgoing, SendResult, Timeouts, store_files
from uronode.audit import AuditLog
from uronode.outbox import Delivery, DeliveryState, Outbox
from uronode.settings import DeliverySettings, Destination

log = logging.getLogger(__name__)


class Deliverer:
    def __init__(self, outbox: Outbox, settings: DeliverySettings, calling_ae: str) -> None:
        self.outbox = outbox
        # When to give up is the delivery settings' (an outbox made without them would keep its default)
        self.outbox.retry_for_s = settings.retry_for_s
        self.settings = settings
        self.calling_ae = calling_ae
        self.destinations = {d.name: d for d in settings.destinations}
        self.timeouts = Timeouts(connect_s=settings.connect_timeout_s, acse_s=settings.acse_timeout_s,
                                 dimse_s=settings.dimse_timeout_s)

    def run_once(self) -> dict[str, int]:
        """One round over every destination with something due, side by side; returns delivered and failed counts."""
        due = self.outbox.due()
        if len(due) > 1:
            tallies = self._side_by_side(due)
        else:
            tallies = [self._deliver_or_fail(name, items) for name, items in due.items()]
        self.outbox.settle_jobs()
        return {"delivered": sum(t[0] for t in tallies), "failed": sum(t[1] for t in tallies)}

    def _side_by_side(self, due: dict[str, list[Delivery]]) -> list[tuple[int, int]]:
        """Each destination in a thread of its own (daemons: a peer that hangs never holds up the node's exit)."""
        tallies: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def deliver(name: str, items: list[Delivery]) -> None:
            try:
                tallies.append(self._deliver_or_fail(name, items))
            except BaseException as exc:  # noqa: BLE001 - raised again below, in the loop's thread
                errors.append(exc)

        threads = [threading.Thread(target=deliver, args=pair, name=f"delivery-{pair[0]}", daemon=True)
                   for pair in due.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return tallies

    def _deliver_or_fail(self, name: str, items: list[Delivery]) -> tuple[int, int]:
        """:meth:`_deliver`, and where it raises, each of the destination's deliveries still pending a failed try
        with the reason: a fault of ours with one destination counts towards its dead letters, never stops the
        round (the other destinations, the jobs' settling) nor repeats without end."""
        try:
            return self._deliver(name, items)
        except Exception as exc:  # noqa: BLE001 - the destination's boundary: its deliveries fail with the reason
            log.exception("delivery to %s failed", name)
            reason = f"internal error sending to {name}: {type(exc).__name__}: {exc}"
            failed = [item for item in items if self.outbox.mark_failed(item.id, reason) is not DeliveryState.DELIVERED]
            return 0, len(failed)

    def _deliver(self, name: str, items: list[Delivery]) -> tuple[int, int]:
        """Send one destination's due deliveries; returns how many were delivered and how many failed."""
        destination = self.destinations.get(name)
        if destination is None:
            for item in items:
                self._failed(item, f"destination {name!r} is not configured any more")
            return 0, len(items)
        if destination.kind == "dicomweb":
            done = self._stow(destination, items)
            return done, len(items) - done
        delivered = failed = 0
        for (host, port, called), group in self._targets(destination, items).items():
            if host is None or port is None:
                for item in group:
                    self._failed(item, called)
                failed += len(group)
                continue
            recorded: set[int] = set()
            results = store_files(
                [Outgoing(d.path, d.sop_class_uid, d.sop_instance_uid) for d in group],
                host=host,
                port=port,
                called_ae=called,
                calling_ae=self.calling_ae,
                timeouts=self.timeouts,
                on_stored=partial(self._stored, group, recorded),
                still_wanted=partial(self._still_owed, group),
            )
            done = self._apply(group, results, recorded)
            delivered += done
            failed += len(group) - done
        return delivered, failed

    def _targets(
        self, destination: Destination, items: list[Delivery]
    ) -> dict[tuple[str | None, int | None, str], list[Delivery]]:
        """Group a destination's deliveries by the peer they go to (host None: the reason in place of the AE)."""
        groups: dict[tuple[str | None, int | None, str], list[Delivery]] = defaultdict(list)
        for item in items:
            if destination.kind == "dicom":
                groups[(destination.host, destination.port, str(destination.ae_title))].append(item)
            elif destination.kind == "sender":
                known = self.settings.known_ae(item.calling_ae or "")
                if known is None:
                    groups[(None, None, f"the sender's AE {item.calling_ae!r} is not in delivery.known_aes")].append(item)
                else:
                    groups[(known.host, known.port, str(item.calling_ae))].append(item)
        return groups

    def _stow(self, destination: Destination, items: list[Delivery]) -> int:
        results = stow(
            str(destination.url),
            [(d.path, d.sop_instance_uid) for d in items],
            username=destination.username,
            password=destination.password,
            token=destination.token,
            timeout_s=self.settings.dimse_timeout_s,  # the answer to a body of results, as for a C-STORE
        )
        return self._apply(items, results)

    def _stored(self, group: list[Delivery], recorded: set[int], index: int, result: SendResult) -> None:
        """One delivery the peer stored, recorded at once: a round stopped or crashed later in its association
        (a slow destination, SIGTERM, kill -9) did not send it again at the next start (probe 24: the whole
        association was recorded at its end, so all of it was sent again)."""
        item = group[index]
        try:
            self.outbox.mark_delivered([item.id])
        except sqlite3.Error as exc:  # the index locked: recorded with the rest when the association ends
            log.warning("delivery %d: stored by %s, not recorded yet: %s", item.id, item.destination, exc)
            return
        AuditLog(self.outbox.store.root).record("delivery", destination=item.destination, job_id=item.job_id,
                                                sop_instance_uid=item.sop_instance_uid, outcome="delivered")
        recorded.add(item.id)

    def _still_owed(self, group: list[Delivery], index: int) -> bool:
        return self.outbox.still_owed(group[index].id)

    def _apply(self, group: list[Delivery], results: Sequence[SendResult | StowResult],
               recorded: set[int] | None = None) -> int:
        """Record a group's results (those in ``recorded`` were as they came: :meth:`_stored`); how many were
        delivered."""
        recorded = recorded or set()
        delivered = [d.id for d, r in zip(group, results, strict=True) if r.ok and d.id not in recorded]
        self.outbox.mark_delivered(delivered)
        audit = AuditLog(self.outbox.store.root)
        for item, result in zip(group, results, strict=True):
            if result.ok and item.id not in recorded:
                audit.record("delivery", destination=item.destination, job_id=item.job_id,
                             sop_instance_uid=item.sop_instance_uid, outcome="delivered")
        for item, result in zip(group, results, strict=True):
            if not result.ok and not getattr(result, "withheld", False):
                self._failed(item, result.reason or "failed", permanent=getattr(result, "permanent", False))
        return sum(1 for result in results if result.ok)

    def _failed(self, item: Delivery, reason: str, permanent: bool = False) -> None:
        state = self.outbox.mark_failed(item.id, reason, permanent=permanent)
        AuditLog(self.outbox.store.root).record(
            "delivery", destination=item.destination, job_id=item.job_id, sop_instance_uid=item.sop_instance_uid,
            outcome="dead" if state is DeliveryState.DEAD else "retry", reason=reason,
        )
        if state is DeliveryState.DEAD:
            log.error("delivery %d of %s to %s is a dead letter: %s", item.id, item.sop_instance_uid, item.destination, reason)
        else:
            log.warning("delivery %d to %s failed, will retry: %s", item.id, item.destination, reason)

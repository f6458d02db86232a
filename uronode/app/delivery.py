"""Delivery: takes what the outbox owes and sends it, one association per destination and round.

The outbox (core) records what each destination is owed; the clients (services) send:
:func:`scp.sender.store_files` for ``dicom`` and ``sender`` destinations, :func:`dicomweb.stow_client.stow`
for ``dicomweb`` ones. This module, in the app, picks the client by the destination's kind. The
node calls :meth:`Deliverer.run_once` as its ``delivery`` loop (:mod:`uronode.loops`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from dicomweb.stow_client import StowResult, stow
from scp.sender import Outgoing, SendResult, store_files
from uronode.audit import AuditLog
from uronode.outbox import Delivery, DeliveryState, Outbox
from uronode.settings import DeliverySettings, Destination

log = logging.getLogger(__name__)


class Deliverer:
    def __init__(self, outbox: Outbox, settings: DeliverySettings, calling_ae: str) -> None:
        self.outbox = outbox
        self.settings = settings
        self.calling_ae = calling_ae
        self.destinations = {d.name: d for d in settings.destinations}

    def run_once(self) -> dict[str, int]:
        """One round over every destination with something due; returns delivered and failed counts."""
        tally = {"delivered": 0, "failed": 0}
        for name, items in self.outbox.due().items():
            destination = self.destinations.get(name)
            if destination is None:
                for item in items:
                    self._failed(item, f"destination {name!r} is not configured any more")
                    tally["failed"] += 1
                continue
            if destination.kind == "dicomweb":
                done = self._stow(destination, items)
                tally["delivered"] += done
                tally["failed"] += len(items) - done
                continue
            for (host, port, called), group in self._targets(destination, items).items():
                if host is None or port is None:
                    for item in group:
                        self._failed(item, called)
                        tally["failed"] += 1
                    continue
                results = store_files(
                    [Outgoing(d.path, d.sop_class_uid, d.sop_instance_uid) for d in group],
                    host=host,
                    port=port,
                    called_ae=called,
                    calling_ae=self.calling_ae,
                )
                done = self._apply(group, results)
                tally["delivered"] += done
                tally["failed"] += len(group) - done
        self.outbox.settle_jobs()
        return tally

    def _targets(
        self, destination: Destination, items: list[Delivery]
    ) -> dict[tuple[str | None, int | None, str], list[Delivery]]:
        """Group a destination's deliveries by the peer they go to (host None: the reason in place of the AE)."""
        groups: dict[tuple[str | None, int | None, str], list[Delivery]] = defaultdict(list)
        for item in items:
            if destination.kind == "dicom":
                groups[(destination.host, destination.port, str(destination.ae_title))].append(item)
            elif destination.kind == "sender":
                known = self.settings.known_aes.get(item.calling_ae or "")
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
        )
        return self._apply(items, results)

    def _apply(self, group: list[Delivery], results: Sequence[SendResult | StowResult]) -> int:
        delivered = [d.id for d, r in zip(group, results, strict=True) if r.ok]
        self.outbox.mark_delivered(delivered)
        audit = AuditLog(self.outbox.store.root)
        for item, result in zip(group, results, strict=True):
            if result.ok:
                audit.record("delivery", destination=item.destination, job_id=item.job_id,
                             sop_instance_uid=item.sop_instance_uid, outcome="delivered")
        for item, result in zip(group, results, strict=True):
            if not result.ok:
                self._failed(item, result.reason or "failed")
        return len(delivered)

    def _failed(self, item: Delivery, reason: str) -> None:
        state = self.outbox.mark_failed(item.id, reason)
        AuditLog(self.outbox.store.root).record(
            "delivery", destination=item.destination, job_id=item.job_id, sop_instance_uid=item.sop_instance_uid,
            outcome="dead" if state is DeliveryState.DEAD else "retry", reason=reason,
        )
        if state is DeliveryState.DEAD:
            log.error("delivery %d of %s to %s is a dead letter: %s", item.id, item.sop_instance_uid, item.destination, reason)
        else:
            log.warning("delivery %d to %s failed, will retry: %s", item.id, item.destination, reason)

"""The node's side of the broker: publish queued jobs, and publish again what no live claim holds.

Two of the node's loops with ``queue.backend = "dramatiq"``: the dispatcher
publishes every queued job that is not yet published, then marks it
(a crash between the two only publishes twice); the sweeper makes publishable
again the jobs nobody claimed within ``queue.claim_timeout_s`` and those whose
claim's lease ran out. The dispatcher also publishes again at once every job
whose message Redis lost (a restart: no persistence, on purpose). Redis down:
the round fails, is logged, and the next one tries again; the jobs wait in
SQLite meanwhile.
"""

from __future__ import annotations

import logging
import socket

from uronode.broker import JobMessage, broker_lost_messages, make_broker, publish
from uronode.claims import Claims
from uronode.settings import Settings
from uronode.store import Store

log = logging.getLogger(__name__)


def node_url(settings: Settings) -> str:
    """The node's HTTP address as it names itself in its messages."""
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
    return f"http://{host}:{settings.dicomweb.port}"


class Dispatcher:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.claims = Claims(store, lease_s=settings.queue.lease_s, claim_timeout_s=settings.queue.claim_timeout_s)
        self.broker = make_broker(settings.queue.broker_url)
        self.node = node_url(settings)
        self.model = settings.inference.model

    def publish_due(self) -> int:
        """One round of the dispatcher: publish what is to be published; returns how many.

        First, where Redis lost its messages since the last round, every published job nobody claimed
        is to be published again (checked here, before publishing, so no message of this round is
        taken for lost; one put on a Redis that then restarts is found lost the next round)."""
        if broker_lost_messages(self.broker, self.node) and (lost := self.claims.broker_emptied()):
            log.warning("the broker lost its messages (Redis restarted empty): %d job(s) are published again", lost)
        self.claims.queue.restamp(self.model)  # a job queued again under an earlier model runs with this one
        count = 0
        for job in self.claims.to_publish():
            publish(self.broker, JobMessage.for_job(job, self.node, self.claims.key_for(job.id, job.series_generation)))
            self.claims.mark_published(job)
            count += 1
        if count:
            log.info("published %d job(s) on the broker", count)
        return count

    def sweep(self) -> None:
        """One round of the sweeper (the dispatcher's next round publishes what it took back)."""
        expired, unclaimed = self.claims.sweep()
        if expired or unclaimed:
            log.warning("%d job(s) whose lease ran out and %d never claimed are published again", expired, unclaimed)

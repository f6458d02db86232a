"""The broker (Dramatiq on Redis) as the node and its remote workers share it: the queue, the message.

Imported only with ``queue.backend = "dramatiq"`` (Dramatiq comes with the
``distributed`` extra). A message is the news that a job may be waiting, no
more: the job's id, the series generation it is for, the study and series
UIDs, the model and the node's URL. No pixels, no patient data; the worker
claims the job over HTTP before it does anything (``docs/distributed.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from uronode.types import Job

QUEUE_NAME = "uronode-jobs"
ACTOR_NAME = "uronode_job"
NAMESPACE = "uronode"
"""Redis keys start with this: the queue is ``uronode:uronode-jobs``, its dead letters ``...XQ``."""
DEAD_LETTERS_KEY = f"{NAMESPACE}:{QUEUE_NAME}.XQ"


class MalformedMessage(ValueError):
    """A message on the queue that is not a job message: it goes to the dead letters, never retried."""


@dataclass(frozen=True, slots=True)
class JobMessage:
    job_id: int
    generation: int
    study_instance_uid: str
    series_instance_uid: str
    model: str
    node: str
    key: str
    """The claim key (``uronode.claims.claim_key``): the claim gives it back, so only the message's holder claims."""

    @classmethod
    def for_job(cls, job: Job, node: str, key: str) -> JobMessage:
        return cls(job.id, job.series_generation, job.study_instance_uid, job.series_instance_uid, job.model, node,
                   key)

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> JobMessage:
        """Check a message's fields (their names and types): :class:`MalformedMessage` says what is wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(fields) != names:
            raise MalformedMessage(f"a job message has the fields {sorted(names)}, not {sorted(fields)}")
        for name in ("job_id", "generation"):
            if not isinstance(fields[name], int) or isinstance(fields[name], bool) or fields[name] < 1:
                raise MalformedMessage(f"{name} is not a positive integer: {fields[name]!r}")
        for name in names - {"job_id", "generation"}:
            if not isinstance(fields[name], str) or not fields[name] or len(fields[name]) > 256:
                raise MalformedMessage(f"{name} is not a short text: {fields[name]!r}")
        return cls(**fields)


def make_broker(url: str, *, heartbeat_timeout_s: float = 60.0) -> RedisBroker:
    """The Redis broker at ``url`` with Dramatiq's default middleware (retries, time limit, dead letters).

    ``heartbeat_timeout_s``: a worker whose Redis heartbeat is older has its unacknowledged
    messages put back on the queue by the others (the node's sweeper does it too, from the leases)."""
    broker = RedisBroker(url=url, namespace=NAMESPACE, heartbeat_timeout=int(heartbeat_timeout_s * 1000))
    broker.declare_queue(QUEUE_NAME)
    return broker


def broker_lost_messages(broker: RedisBroker, node: str) -> bool:
    """Whether Redis lost what it held since this node last asked (a restart with no persistence, a flush).

    The node keeps a marker key of its own in Redis (no expiry) and sets it only where it is missing:
    missing means Redis started empty (or was flushed) since, so the messages it carried are gone.
    More robust than Redis's ``run_id``: it also sees a restart while the node was down and a
    ``FLUSHALL``, and a restart that kept its data (persistence on) is no loss. The first call on a
    new Redis answers True too; publishing again then costs at most one 409 per job."""
    return bool(broker.client.set(f"{NAMESPACE}:node:{node}", "1", nx=True))


def publish(broker: RedisBroker, message: JobMessage) -> None:
    """Put the message on the queue (raises the client's error when Redis cannot be reached)."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(), kwargs=dataclasses.asdict(message), options={}
        )
    )

"""The model a job's message names is the node's, whenever the job was queued (issue: workers past one machine).

Remote workers take only messages for exactly their model, so a job queued under a model the
deployment no longer runs (queued before the change, or run then and queued again) would wait
for ever; the dispatcher stamps it with the node's model before it publishes it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.peers.redis import Redis
from uronode.app.dispatch import Dispatcher
from uronode.broker import NAMESPACE, QUEUE_NAME
from uronode.jobs import JobQueue
from uronode.settings import Settings
from uronode.store import Store
from uronode.types import JobState


def published(redis: Redis) -> dict[int, str]:
    """job id -> the model its message on the queue names."""
    messages = redis.cli("HVALS", f"{NAMESPACE}:{QUEUE_NAME}.msgs").splitlines()
    kwargs = [json.loads(m)["kwargs"] for m in messages]
    return {k["job_id"]: k["model"] for k in kwargs}


def test_the_dispatcher_publishes_every_queued_job_under_the_node_s_model(redis: Redis, tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    with store.transaction() as conn:
        old = queue.enqueue_in(conn, "1.2.3", "1.2.3.1", 1, "cascade-2.1.0")
        new = queue.enqueue_in(conn, "1.2.3", "1.2.3.2", 1, "default")
    settings = Settings(storage={"data_dir": tmp_path / "data"}, inference={"model": "default"},
                        queue={"backend": "dramatiq", "broker_url": redis.url})
    dispatcher = Dispatcher(store, settings)
    try:
        assert dispatcher.publish_due() == 2
        assert published(redis) == {old: "default", new: "default"}
        # run under the old model and queued again later (`uronode requeue` keeps a job's stamp)
        with store.transaction() as conn:
            conn.execute("UPDATE jobs SET state = 'failed', reason = 'x', model = 'cascade-2.1.0' WHERE id = ?",
                         (old,))
        queue.requeue(old)
        job = queue.get(old)
        assert job is not None and (job.state, job.model) == (JobState.QUEUED, "cascade-2.1.0")
        assert dispatcher.publish_due() == 1
        job = queue.get(old)
        assert job is not None and job.model == "default"
        assert [m for i, m in published(redis).items() if i == old] == ["default"]
    finally:
        dispatcher.broker.close()

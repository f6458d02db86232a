"""uronode's core: settings, shared records, errors, the store and index, the job queue, the outbox,
series completion, retention, the audit log and the background loops.

The services (``scp``, ``dicomweb``, ``inference``) depend on the core and never on each other;
the app (:mod:`uronode.app`: the node's composition, the worker, the CLI) sits on top. Nothing in
the core imports a service or the app (``docs/architecture.md``).
"""

__version__ = "0.1.0"

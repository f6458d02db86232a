"""uronode's core: settings, shared records, errors, the store and index, the job queue, the outbox,
series completion, retention, the audit log and the background loops.

The services (``scp``, ``dicomweb``, ``inference``) depend on the core and never on each other;
the app (:mod:`uronode.app`: the node's composition, the worker, the CLI) sits on top. Nothing in
the core imports a service or the app (``docs/architecture.md``).
"""

__version__ = "2026.12.7"
"""The release: the date it was made (calendar versioning, YEAR.MONTH.DAY; a second release of one day adds
``.1``). Raised with every landing that changes what the node does, with ``version`` in pyproject.toml
(``tests/uronode/test_version.py`` ties them); results carry it in SoftwareVersions (probe 43: every release
called itself 0.1.0)."""

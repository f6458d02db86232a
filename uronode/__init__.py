"""uronode's shared package: settings, shared records, the store, the job queue and the CLI.

``scp``, ``inference`` and ``dicomweb`` depend on this package and never on each other.
"""

__version__ = "0.1.0"

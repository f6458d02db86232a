"""Benchmarks against real peers, one module each, run from the repository root as ``python -m bench.<name>``.

Each measures uronode and a peer (DCMTK, Orthanc, another model design) in the same run and reports
ratios; the figures are recorded in docs/benchmarks.md. They start their peers with the tests' own
(``tests.peers``) and make their data with ``tests.factory`` or ``lab.synth``.
"""

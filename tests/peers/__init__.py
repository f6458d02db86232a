"""Real peers for tests and benchmarks: DCMTK, Orthanc and the node itself, started on loopback."""

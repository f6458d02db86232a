"""The HTTP side of the node (FastAPI): health, the REST API, and (next) DICOMweb and the viewer."""

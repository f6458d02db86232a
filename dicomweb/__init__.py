"""The HTTP side of the node (FastAPI): DICOMweb, the REST API, the upload page, OHIF, health and metrics."""

"""The paper's web workflow as a page of the node: upload, Predict, see the stones, open the viewer."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
PAGE = Path(__file__).resolve().parent / "static" / "upload.html"


@router.get("/upload")
def upload_page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

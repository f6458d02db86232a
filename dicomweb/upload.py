"""The paper's web workflow as a page of the node: upload, Predict, see the stones, open the viewer."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from dicomweb.api import MAX_UPLOAD_BYTES

router = APIRouter(include_in_schema=False)
PAGE = Path(__file__).resolve().parent / "static" / "upload.html"
LIMIT_MARK = "__MAX_UPLOAD_BYTES__"
"""Where the page holds the upload limit, filled in when it is served, so that it refuses a larger choice before sending."""


@router.get("/upload")
def upload_page() -> HTMLResponse:
    page = PAGE.read_text(encoding="utf-8").replace(LIMIT_MARK, str(MAX_UPLOAD_BYTES))
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

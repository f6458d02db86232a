"""OHIF, served by the node at the site root, pointed at the node's own DICOMweb (same origin).

The prebuilt viewer (`@ohif/app` from the npm registry, never committed) is
read from ``dicomweb.viewer_dir`` (in a checkout, where ``./run`` fetches it
into ``.ohif/``; the Dockerfile puts it in the image) and served as static files with a
single-page fallback: a path that is not a file gets ``index.html``, so
``/viewer?StudyInstanceUIDs=...`` works. ``/app-config.js`` is made here.
Paths of the API, DICOMweb and health never fall back to the viewer: an
unknown one there is a 404.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

NOT_VIEWER = ("dicom-web", "api", "docs", "redoc", "openapi.json", "healthz", "readyz", "metrics", "upload")

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")

APP_CONFIG = """/* uronode: OHIF reads the node's own DICOMweb on the same origin. */
(function () {
  // The radiologist's layout: the CT with the stone mask as a layer (left) beside the AI overlay
  // series (right), zoom/pan and slice position linked. Not the window: the CT's window would wash
  // out the RGB overlay images.
  const linked = [
    { type: 'zoompan', id: 'uronode-zoompan', source: true, target: true },
    { type: 'imageslice', id: 'uronode-slice', source: true, target: true },
  ];
  const ctWithStones = {
    id: 'uronode-ct-overlay',
    name: 'uronode: CT with stones beside the AI overlay',
    protocolMatchingRules: [
      { attribute: 'ModalitiesInStudy', constraint: { contains: 'SEG' }, weight: 20 },
    ],
    toolGroupIds: ['default'],
    numberOfPriorsReferenced: 0,
    displaySetSelectors: {
      ct: { seriesMatchingRules: [{ attribute: 'Modality', constraint: { equals: 'CT' }, required: true }] },
      seg: { seriesMatchingRules: [{ attribute: 'Modality', constraint: { equals: 'SEG' }, required: true }] },
      overlay: {
        seriesMatchingRules: [
          { attribute: 'Modality', constraint: { equals: 'OT' }, required: true },
          { attribute: 'SeriesDescription', constraint: { contains: 'AI urinary stones' }, required: true },
        ],
      },
    },
    defaultViewport: {
      viewportOptions: { viewportType: 'stack', toolGroupId: 'default', allowUnmatchedView: true },
      displaySets: [{ id: 'ct', matchedDisplaySetsIndex: -1 }],
    },
    stages: [
      {
        name: 'CT and AI overlay',
        viewportStructure: { layoutType: 'grid', properties: { rows: 1, columns: 2 } },
        viewports: [
          {
            viewportOptions: { viewportId: 'uronode-ct', toolGroupId: 'default', syncGroups: linked,
                               allowUnmatchedView: true },
            displaySets: [{ id: 'ct' }, { id: 'seg' }],
          },
          {
            viewportOptions: { viewportId: 'uronode-overlay', toolGroupId: 'default', syncGroups: linked,
                               allowUnmatchedView: true },
            displaySets: [{ id: 'overlay' }],
          },
        ],
      },
    ],
  };
  const uronode = {
    id: 'uronode',
    getHangingProtocolModule: () => [{ name: ctWithStones.id, protocol: ctWithStones }],
    getCommandsModule: () => ({
      definitions: {
        // The paper's "Tag on": show or hide the DICOM tags in the viewport corners.
        uronodeToggleTags: {
          commandFn: () => {
            document.querySelectorAll('.viewport-overlay').forEach((e) => e.classList.toggle('hidden'));
          },
        },
      },
      defaultContext: 'VIEWER',
    }),
  };
  window.config = {
    routerBasename: '/',
    extensions: [uronode],
    modes: [],
    customizationService: [
      {
        'ohif.hotkeyBindings': {
          $push: [{ commandName: 'uronodeToggleTags', label: 'Tag on/off', keys: ['t'], isEditable: true }],
        },
      },
    ],
    showStudyList: true,
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    disableConfirmationPrompts: true,
    investigationalUseDialog: { option: 'never' },
    defaultDataSourceName: 'uronode',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'uronode',
        configuration: {
          friendlyName: 'uronode',
          name: 'uronode',
          wadoUriRoot: window.location.origin + '/dicom-web',
          qidoRoot: window.location.origin + '/dicom-web',
          wadoRoot: window.location.origin + '/dicom-web',
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          bulkDataURI: { enabled: true, relativeResolution: 'studies' },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
  };
})();
"""


def make_router(viewer_dir: Path) -> APIRouter:
    """The viewer's routes, serving OHIF's ``dist`` folder ``viewer_dir`` (``dicomweb.viewer_dir``)."""
    root = viewer_dir.resolve()
    router = APIRouter(include_in_schema=False)

    @router.get("/app-config.js")
    def app_config() -> Response:
        return Response(APP_CONFIG, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @router.get("/{path:path}")
    def viewer(path: str) -> Response:
        if path.split("/", 1)[0] in NOT_VIEWER:
            raise HTTPException(404, detail=f"no such resource: /{path[:100]}")
        index = root / "index.html"
        if not index.is_file():
            raise HTTPException(
                404,
                detail=f"the OHIF viewer is not installed in {root} (dicomweb.viewer_dir); ./run serve fetches it",
            )
        candidate = (root / path).resolve()
        if path and candidate.is_file() and candidate.is_relative_to(root):
            return FileResponse(candidate)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    return router

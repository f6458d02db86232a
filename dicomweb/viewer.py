"""OHIF, served by the node at the site root, pointed at the node's own DICOMweb (same origin).

The prebuilt viewer (`@ohif/app` from the npm registry, never committed) is
read from ``dicomweb.viewer_dir`` (in a checkout, where ``./run`` fetches it
into ``.ohif/``; the Dockerfile puts it in the image) and served as static files with a
single-page fallback: a path that is not a file gets ``index.html``, so
``/viewer?StudyInstanceUIDs=...`` works (``&SeriesInstanceUID=<CT series>`` or
``&uronodeSeriesInstanceUID=...`` picks one CT series of the study, shown with its own
results). ``/app-config.js`` is made here.
Paths of the API, DICOMweb and health never fall back to the viewer: an
unknown one there is a 404.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

NOT_VIEWER = ("dicom-web", "api", "docs", "redoc", "openapi.json", "healthz", "readyz", "metrics", "upload")

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")

APP_CONFIG = """/* uronode: OHIF reads the node's own DICOMweb on the same origin. See docs/viewer.md. */
(function () {
  const RESULTS = 'AI urinary stones';  // the SeriesDescription every result series of the node starts with
  const CT_VIEWPORT = 'uronode-ct';
  const OVERLAY_VIEWPORT = 'uronode-overlay';
  const MEASUREMENTS_PANEL = '@ohif/extension-measurement-tracking.panelModule.trackedMeasurements';
  const MASK_OPACITY = [0.2, 0.4, 0.6, 0.8, 1.0];
  const state = { maskOpacity: 2, layer: 'both', overlay: true, synced: true };

  const list = (x) => (x == null ? [] : Array.isArray(x) ? x : [x]);
  const first = (x) => list(x)[0];
  const code = (item) => first(item.ConceptNameCodeSequence) || {};
  const isResult = (ds) => (ds.SeriesDescription || '').startsWith(RESULTS);

  // The CT series to open may be named in the URL: SeriesInstanceUID or uronodeSeriesInstanceUID (the upload
  // page's link), OHIF's own initialSeriesInstanceUID, or among OHIF's SeriesInstanceUIDs (a filter: only the
  // series listed load). OHIF 3.13 reads SeriesInstanceUID as that filter too and would load the CT alone, without
  // its results: before OHIF starts, it becomes initialSeriesInstanceUID (the whole study loads, opened on it).
  const URL_SERIES = ['uronodeseriesinstanceuid', 'initialseriesinstanceuid', 'seriesinstanceuids'];
  (function seriesFromUrl() {
    const url = new URL(window.location.href);
    const keys = [...url.searchParams.keys()];
    const named = keys.filter((k) => k.toLowerCase() === 'seriesinstanceuid');
    if (!named.length) return;
    const initial = keys.filter((k) => k.toLowerCase() === 'initialseriesinstanceuid');
    const uids = [...named, ...initial].flatMap((k) => url.searchParams.getAll(k));
    [...named, ...initial].forEach((k) => url.searchParams.delete(k));
    url.searchParams.set('initialSeriesInstanceUID', uids.join(','));
    window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
  })();

  function seriesInUrl() {
    const uids = [];
    for (const [key, value] of new URLSearchParams(window.location.search)) {
      if (URL_SERIES.includes(key.toLowerCase())) uids.push(...value.split(',').map((u) => u.trim()).filter(Boolean));
    }
    return uids;
  }

  // Whether a result display set of the node was made from the CT display set `ct`: a SEG by its
  // ReferencedSeriesSequence, an SR by the series of its evidence (CurrentRequestedProcedureEvidenceSequence),
  // an overlay (Secondary Capture) by the CT image of its SourceImageSequence.
  const sopsOf = new WeakMap();
  function madeFrom(ds, ct) {
    const instance = first(ds.instances) || ds.instance || {};
    if (ds.Modality === 'SEG') {
      const uid = ds.referencedSeriesInstanceUID || (first(instance.ReferencedSeriesSequence) || {}).SeriesInstanceUID;
      return uid === ct.SeriesInstanceUID;
    }
    if (ds.Modality === 'SR') {
      return list(instance.CurrentRequestedProcedureEvidenceSequence).some((study) => list(study.ReferencedSeriesSequence)
        .some((series) => series.SeriesInstanceUID === ct.SeriesInstanceUID));
    }
    if (ds.Modality === 'OT') {
      if (!sopsOf.has(ct)) sopsOf.set(ct, new Set(list(ct.instances).map((i) => i.SOPInstanceUID)));
      const sops = sopsOf.get(ct);
      return list(ds.instances).some((i) => sops.has((first(i.SourceImageSequence) || {}).ReferencedSOPInstanceUID));
    }
    return false;
  }

  // What the reading layout shows, from the display sets of one study: ONE CT series and the SEG, overlay series
  // and SR made from it. The CT is `ct` when given (the one the CT viewport shows), else the one the URL names,
  // else the first (by series number) with results (a SEG or SR made from it), else the first.
  function readingSet(displaySets, ct) {
    const all = list(displaySets).filter((ds) => ds && !ds.unsupported);
    const number = (ds) => (Number.isFinite(Number.parseInt(ds.SeriesNumber, 10))
      ? Number.parseInt(ds.SeriesNumber, 10) : Infinity);
    const cts = all.filter((ds) => ds.Modality === 'CT').sort((a, b) => number(a) - number(b));
    const results = all.filter(isResult);
    const of = (c, modality) => results.find((ds) => ds.Modality === modality && madeFrom(ds, c));
    const chosen = ct
      || seriesInUrl().map((uid) => cts.find((ds) => ds.SeriesInstanceUID === uid)).find(Boolean)
      || cts.find((c) => of(c, 'SEG') || of(c, 'SR'))
      || cts[0];
    if (!chosen) return null;
    return { ct: chosen, seg: of(chosen, 'SEG'), overlay: of(chosen, 'OT'), sr: of(chosen, 'SR') };
  }

  // The report of an SR display set: its last instance (the one OHIF opens; the node's report series hold one).
  function reportOf(ds) {
    const instances = list(ds.instances);
    return instances.length ? instances[instances.length - 1] : ds.instance || {};
  }

  // A report of the node without stones: its verdict (the comment of its Qualitative Evaluations), or null for a
  // report with a stone (a stone has an image region). Reports made before 2026-12-06 kept "Not detected" in a
  // measurement group without a region: they are reports without stones too (review 27).
  function noStoneVerdict(ds) {
    if (stonesOf(ds).length) return null;
    const root = list(reportOf(ds).ContentSequence);
    const evaluations = root.find((item) => code(item).CodeValue === 'C0034375');
    const comment = evaluations && list(evaluations.ContentSequence).find((item) => item.ValueType === 'TEXT');
    return comment ? comment.TextValue : null;
  }

  // OHIF 3.13's SR viewport cannot show a report without a measurement, and opening one blanked the whole viewer
  // (probe 26). The node's no-stone reports are not offered as series to open (a PACS shows them as any SR);
  // their verdict is written over each viewport that shows the CT series it is about, for as long as it shows
  // it: it goes with the viewport when the study is left, and comes back when it is opened again (review 27).
  const verdicts = new Map();  // CT SeriesInstanceUID -> the report's { title, message }
  const withStones = new Set();  // CT series with a report that has stones: no "no stone" note over them
  function takeVerdicts(services, added) {
    for (const ds of list(added)) {
      if (!ds || ds.Modality !== 'SR' || !isResult(ds)) continue;
      const message = noStoneVerdict(ds);
      const about = list(reportOf(ds).CurrentRequestedProcedureEvidenceSequence)
        .flatMap((study) => list(study.ReferencedSeriesSequence).map((series) => series.SeriesInstanceUID));
      if (message === null) {  // a report with stones (a re-run, another model) outranks any note (review 28)
        about.forEach((uid) => { withStones.add(uid); verdicts.delete(uid); });
        continue;
      }
      about.filter((uid) => !withStones.has(uid))
        .forEach((uid) => verdicts.set(uid, { title: ds.SeriesDescription, message }));
      const uid = ds.displaySetInstanceUID;
      setTimeout(() => {  // deleting one OHIF no longer holds would remove its last display set instead
        if (services.displaySetService.getDisplaySetByUID(uid)) services.displaySetService.deleteDisplaySet(uid);
      }, 0);
    }
  }
  // Calls fn now and on each new image of the viewport's element, in place of the listener kept under key before
  // (OHIF reuses the element when another series is shown in it).
  function onNewImage(element, key, fn) {
    if (element[key]) element.removeEventListener('CORNERSTONE_STACK_NEW_IMAGE', element[key]);
    element[key] = fn;
    element.addEventListener('CORNERSTONE_STACK_NEW_IMAGE', fn);
    fn();
  }
  function showVerdicts() {
    const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
    for (const vp of (engine ? engine.getViewports() : [])) {
      const element = vp.element;
      if (!element || !vp.getCurrentImageId) continue;
      const update = () => {
        const series = (((vp.getCurrentImageId() || '').split('/series/')[1]) || '').split('/')[0];
        const verdict = verdicts.get(series);
        let note = element.querySelector('.uronode-verdict');
        if (!verdict) {
          if (note) note.remove();
          return;
        }
        if (!note) {
          note = document.createElement('div');
          note.className = 'uronode-verdict';
          note.style.cssText = 'position:absolute;left:8px;right:8px;bottom:64px;color:#fff;'
            + 'background:rgba(0,40,80,0.85);border:1px solid #5acce6;border-radius:4px;padding:8px;z-index:10;'
            + 'pointer-events:none;white-space:pre-line;';
          element.appendChild(note);
        }
        note.textContent = verdict.title + '\\n' + verdict.message;
      };
      onNewImage(element, 'uronodeVerdict', update);
    }
  }

  function studyDisplaySets(services, studyInstanceUID) {
    return services.displaySetService.getActiveDisplaySets().filter((ds) => ds.StudyInstanceUID === studyInstanceUID);
  }

  // The CT display set the CT viewport shows, if any.
  function shownCT(services) {
    const uids = services.viewportGridService.getDisplaySetsUIDsForViewport(CT_VIEWPORT) || [];
    return uids.map((uid) => services.displaySetService.getDisplaySetByUID(uid)).find((ds) => ds && ds.Modality === 'CT');
  }

  // The stones of the node's SR: tracking UID -> { diameter, sop } (TID 1500: a volumetric group with the
  // measurements and a planar group with the stone's box on its widest slice share a tracking UID).
  function stonesOf(sr) {
    const stones = {};
    const report = list(reportOf(sr).ContentSequence);
    const measurements = report.find((i) => code(i).CodeValue === '126010');
    for (const group of list(measurements && measurements.ContentSequence)) {
      const items = list(group.ContentSequence);
      const uid = (items.find((i) => code(i).CodeValue === '112040') || {}).UID;
      if (!uid) continue;
      const stone = (stones[uid] = stones[uid] || {});
      for (const item of items) {
        if (item.ValueType === 'NUM' && code(item).CodeValue === '81827009') {
          stone.diameter = Number(first(item.MeasuredValueSequence).NumericValue);
        }
        if (item.ValueType === 'SCOORD') {
          stone.sop = first(first(item.ContentSequence).ReferencedSOPSequence).ReferencedSOPInstanceUID;
        }
        if (item.ValueType === 'TEXT' && code(item).CodeValue === '121106') stone.label = item.TextValue;
      }
    }
    return Object.values(stones).filter((s) => s.sop);
  }

  function viewport(services, id) {
    return services.cornerstoneViewportService.getCornerstoneViewport(id);
  }

  function isShowing(services, viewportId, sopInstanceUID) {
    const vp = viewport(services, viewportId);
    return Boolean(vp && (vp.getCurrentImageId() || '').includes('/instances/' + sopInstanceUID + '/'));
  }

  function showImage(services, viewportId, sopInstanceUID) {
    const vp = viewport(services, viewportId);
    if (!vp || !sopInstanceUID) return false;
    const index = vp.getImageIds().findIndex((id) => id.includes('/instances/' + sopInstanceUID + '/'));
    if (index < 0) return false;
    vp.setImageIdIndex(index);
    return true;
  }

  // Both viewports on the slice of the largest stone; the SR's stones into the measurement panel.
  async function openOnStones({ servicesManager, commandsManager }) {
    const services = servicesManager.services;
    const { displaySetService, segmentationService } = services;
    // The SR and overlay series made from the CT series the CT viewport shows, not any of the study's.
    const ct = shownCT(services);
    const chosen = ct && readingSet(studyDisplaySets(services, ct.StudyInstanceUID), ct);
    const sr = chosen && chosen.sr;
    const overlay = chosen && chosen.overlay;
    segmentationService.setStyle({ type: 'Labelmap' }, { fillAlpha: MASK_OPACITY[state.maskOpacity],
                                                        renderOutline: true, outlineWidth: 2 });
    // The stone's box on the image says which stone it is, not cornerstone's statistics of the box.
    const tools = services.toolGroupService.getToolGroup('default');
    // One short line each ('Stone 1, left', '17.9 mm', '2609 mm3', 'mean 1431 HU'): a narrow label beside the box.
    const lines = (label) => (label ? label.split(': ').flatMap((part, i) => (i ? part.split(', ') : [part])) : []);
    if (tools) tools.setToolConfiguration('RectangleROI', { getTextLines: (data) => lines(data.label) });
    if (!sr) return;
    const stones = stonesOf(sr).sort((a, b) => (b.diameter || 0) - (a.diameter || 0));
    if (!stones.length) return;
    const sop = stones[0].sop;
    const sc = overlay && list(overlay.instances).find(
      (i) => (first(i.SourceImageSequence) || {}).ReferencedSOPInstanceUID === sop);
    if (!sr.isLoaded) await sr.load();
    const annotations = () => (window.cornerstoneTools ? window.cornerstoneTools.annotation.state.getAllAnnotations() : []);
    const before = new Set(annotations().map((annotation) => annotation.annotationUID));
    if (sr.isRehydratable && !sr.isHydrated) {
      // Track the CT series first, so that OHIF adds the SR's stones without asking.
      const tracked = [...new Set(sr.measurements.map((m) => m.displaySetInstanceUID).filter(Boolean))]
        .map((uid) => displaySetService.getDisplaySetByUID(uid).SeriesInstanceUID);
      commandsManager.runCommand('restoreTrackedSeries', { StudyInstanceUID: sr.StudyInstanceUID,
                                                          SeriesInstanceUIDs: tracked });
      commandsManager.runCommand('hydrateStructuredReport', { displaySetInstanceUID: sr.displaySetInstanceUID });
      sr.isHydrated = true;
    }
    // the boxes this report's stones got as it was hydrated now (not a reader's own, nor those of a report a
    // reader saved from OHIF: they keep their boxes as drawn)
    const ours = new Set(stones.map((stone) => stone.label).filter(Boolean));
    const frameOurs = () => annotations()
      .filter((annotation) => !before.has(annotation.annotationUID) && annotation.metadata
              && annotation.metadata.toolName === 'RectangleROI' && ours.has((annotation.data || {}).label))
      .forEach(frameStone);
    frameOurs();
    // OHIF may still move a viewport (it hangs the protocol twice; the slice synchronizer follows the
    // overlay's first image): set both until they stay on the stone for two checks in a row.
    const wanted = [[CT_VIEWPORT, sop], [OVERLAY_VIEWPORT, sc && sc.SOPInstanceUID]];
    for (let steady = 0, tries = 0; steady < 2 && tries < 20; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      frameOurs();  // OHIF adds the report's boxes as it hydrates it
      const off = wanted.filter(([id, uid]) => uid && !isShowing(services, id, uid));
      off.forEach(([id, uid]) => showImage(services, id, uid));
      steady = off.length ? 0 : steady + 1;
    }
    // Zoom and pan are synchronized relative to each viewport's initial camera: make it the fitted view each
    // shows now, so that both count from the same view (and Reset comes back to it).
    for (const [id] of wanted) {
      const vp = viewport(services, id);
      if (vp) vp.setCamera(vp.getCamera(), true);
    }
    if (overlay) followOverlay(services, overlay);
    // For the tests: the viewer has opened on this slice, only when both viewports really show it.
    if (wanted.every(([id, uid]) => !uid || isShowing(services, id, uid))) window.uronodeOpened = sop;
  }

  // The overlay series holds only the CT images with a stone, and the slice synchronizer leaves it on the nearest
  // one: beside a CT image without a stone it showed another image's stone and "1 on this slice" (probe 26). It
  // is dimmed there, with a note, and shown as it is again on an image it was made from.
  const OVERLAY_NOTE = 'No stone on this CT image: the overlay series holds only the images with stones.';
  function followOverlay(services, overlay) {
    const ct = viewport(services, CT_VIEWPORT);
    const side = viewport(services, OVERLAY_VIEWPORT);
    if (!ct || !side || !ct.element || !side.element) return;
    const made = new Set(list(overlay.instances).map((i) => (first(i.SourceImageSequence) || {}).ReferencedSOPInstanceUID));
    let note = side.element.querySelector('.uronode-overlay-note');
    if (!note) {
      note = document.createElement('div');
      note.className = 'uronode-overlay-note';
      note.textContent = OVERLAY_NOTE;
      note.style.cssText = 'position:absolute;left:0;right:0;top:45%;text-align:center;color:#fff;'
        + 'background:rgba(0,0,0,0.75);padding:8px;z-index:10;pointer-events:none;display:none;';
      side.element.appendChild(note);
    }
    const follow = () => {
      const shown = ((viewport(services, CT_VIEWPORT).getCurrentImageId() || '').split('/instances/')[1] || '')
        .split('/')[0];
      const matches = !shown || made.has(shown);
      const canvas = side.element.querySelector('.viewport-element') || side.element.querySelector('canvas');
      if (canvas) canvas.style.opacity = matches ? '1' : '0.25';
      note.style.display = matches ? 'none' : 'block';
      side.element.dataset.uronodeMatches = matches ? 'yes' : 'no';
    };
    // one listener, for the overlay series shown now (another CT series of the study has its own)
    onNewImage(ct.element, 'uronodeFollow', follow);
  }

  function segmentations(services) {
    const { segmentationService } = services;
    return segmentationService.getSegmentationRepresentations(CT_VIEWPORT) || [];
  }

  function setMask(services, visible) {
    for (const rep of segmentations(services)) {
      if (rep.visible !== visible) {
        services.segmentationService.toggleSegmentationRepresentationVisibility(
          CT_VIEWPORT, { segmentationId: rep.segmentationId, type: rep.type });
      }
    }
  }

  // A stone's region in the report is its own extent (docs/conformance.md); drawn so, the box's outline covered
  // a stone of a few pixels at the default zoom and no red was seen (probe 26). It is drawn with the overlay's
  // 5 mm around the stone, as the green box beside it: the stone shows inside its frame.
  const BOX_MARGIN_MM = 5;
  function frameStone(annotation) {
    const points = annotation && annotation.data && annotation.data.handles && annotation.data.handles.points;
    if (!points || points.length !== 4 || annotation.data.uronodeFramed) return;
    const minus = (a, b) => a.map((v, i) => v - b[i]);
    const dot = (a, b) => a.reduce((sum, v, i) => sum + v * b[i], 0);
    const unit = (a) => { const n = Math.sqrt(dot(a, a)) || 1; return a.map((v) => v / n); };
    // cornerstone's rectangle: top left, top right, bottom left, bottom right, in world millimetres
    const across = unit(minus(points[1], points[0]));
    const down = unit(minus(points[2], points[0]));
    const centre = [0, 1, 2].map((i) => points.reduce((sum, p) => sum + p[i], 0) / 4);
    annotation.data.handles.points = points.map((p) => {
      const a = Math.sign(dot(minus(p, centre), across)) * BOX_MARGIN_MM;
      const d = Math.sign(dot(minus(p, centre), down)) * BOX_MARGIN_MM;
      return p.map((v, i) => v + a * across[i] + d * down[i]);
    });
    annotation.data.uronodeFramed = true;
    annotation.invalidated = true;
    const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
    if (engine) engine.render();
  }

  function setBoxes(visible) {
    const tools = window.cornerstoneTools;
    for (const annotation of tools.annotation.state.getAllAnnotations()) {
      tools.annotation.visibility.setAnnotationVisibility(annotation.annotationUID, visible);
    }
  }

  function setCT(services, visible) {
    const vp = viewport(services, CT_VIEWPORT);
    const actor = vp && vp.getDefaultActor();
    if (actor) actor.actor.setVisibility(visible);
  }

  function render(services) {
    for (const id of [CT_VIEWPORT, OVERLAY_VIEWPORT]) {
      const vp = viewport(services, id);
      if (vp) vp.render();
    }
  }

  function applyLayers(services) {
    setCT(services, state.layer !== 'mask');
    setMask(services, state.overlay && state.layer !== 'ct');
    setBoxes(state.overlay);
    render(services);
  }

  const linked = [
    { type: 'zoompan', id: 'uronode-zoompan', source: true, target: true },
    { type: 'imageslice', id: 'uronode-slice', source: true, target: true },
  ];
  const ctWithStones = {
    id: 'uronode-ct-overlay',
    name: 'uronode: CT with stones beside the AI overlay',
    protocolMatchingRules: [
      { attribute: 'uronodeResults', constraint: { equals: 'yes' }, required: true, weight: 100 },
    ],
    toolGroupIds: ['default'],
    numberOfPriorsReferenced: 0,
    callbacks: {
      // The stone list opens with the layout, before the viewports get their size and images.
      onProtocolEnter: [{ commandName: 'uronodeShowStoneList' }],
      onViewportDataInitialized: [{ commandName: 'uronodeOpenOnStones' }],
    },
    // One CT series and the SEG and overlay series made from it (uronodeSeries, see readingSet), not any of the study.
    displaySetSelectors: {
      ct: {
        seriesMatchingRules: [
          { attribute: 'Modality', constraint: { equals: 'CT' }, required: true },
          { attribute: 'uronodeSeries', constraint: { equals: 'yes' }, required: true },
        ],
      },
      seg: {
        seriesMatchingRules: [
          { attribute: 'Modality', constraint: { equals: 'SEG' }, required: true },
          { attribute: 'SeriesDescription', constraint: { contains: RESULTS }, required: true },
          { attribute: 'uronodeSeries', constraint: { equals: 'yes' }, required: true },
        ],
      },
      overlay: {
        seriesMatchingRules: [
          { attribute: 'Modality', constraint: { equals: 'OT' }, required: true },
          { attribute: 'SeriesDescription', constraint: { contains: RESULTS }, required: true },
          { attribute: 'uronodeSeries', constraint: { equals: 'yes' }, required: true },
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
            viewportOptions: { viewportId: CT_VIEWPORT, toolGroupId: 'default', syncGroups: linked,
                               allowUnmatchedView: true },
            displaySets: [{ id: 'ct' }, { id: 'seg' }],
          },
          {
            viewportOptions: { viewportId: OVERLAY_VIEWPORT, toolGroupId: 'default', syncGroups: linked,
                               allowUnmatchedView: true },
            displaySets: [{ id: 'overlay' }],
          },
        ],
      },
    ],
  };
  const command = (commandFn) => ({ commandFn });
  const uronode = {
    id: 'uronode',
    // A study holds the node's results when one of its series is a SEG the node made.
    preRegistration: ({ servicesManager }) => {
      const services = servicesManager.services;
      services.displaySetService.subscribe(services.displaySetService.EVENTS.DISPLAY_SETS_ADDED,
        ({ displaySetsAdded }) => takeVerdicts(services, displaySetsAdded));
      // A stone's row in the measurement panel: the SR's comment, site and finding, not cornerstone's figures of
      // the box ("0" before its slice was shown, then "4.17 mm2", "Max: 198 HU"), which read like the stone's
      // (probe 26); the image's series and number stay.
      const { measurementService } = services;
      for (const event of ['MEASUREMENT_ADDED', 'MEASUREMENT_UPDATED', 'RAW_MEASUREMENT_ADDED']) {
        if (!measurementService.EVENTS[event]) continue;
        measurementService.subscribe(measurementService.EVENTS[event], ({ measurement }) => {
          // the node's boxes only, by their tool and their label's form ('Stone 2, right: ..., mean 585 HU'): a
          // reader's own measurement named "Stone 1" keeps its figures (review 28)
          if (!measurement || measurement.toolName !== 'RectangleROI'
              || !/^Stone [0-9]+, [a-z ]+: .*, mean -?[0-9]+ HU/.test(measurement.label || '')) return;
          if (measurement.displayText && list(measurement.displayText.primary).length) {
            measurement.displayText = { ...measurement.displayText, primary: [] };
          }
        });
      }
      for (const event of ['VIEWPORTS_READY', 'GRID_STATE_CHANGED']) {
        services.viewportGridService.subscribe(services.viewportGridService.EVENTS[event],
          () => setTimeout(showVerdicts, 0));
      }
      services.hangingProtocolService.addCustomAttribute(
        'uronodeResults', 'Holds uronode results',
        (study, options) => (list(options && options.displaySets).some(
          (ds) => ds.Modality === 'SEG' && isResult(ds) &&
                  (!study || !study.StudyInstanceUID || ds.StudyInstanceUID === study.StudyInstanceUID)) ? 'yes' : 'no'));
      // A display set is one of the reading layout's: the chosen CT series or a result made from it.
      services.hangingProtocolService.addCustomAttribute(
        'uronodeSeries', 'The CT series shown and its uronode results',
        (ds, options) => {
          const displaySets = options && options.displaySets
            ? list(options.displaySets).filter((d) => d.StudyInstanceUID === ds.StudyInstanceUID)
            : studyDisplaySets(services, ds.StudyInstanceUID);
          const chosen = readingSet(displaySets);
          return chosen && [chosen.ct, chosen.seg, chosen.overlay, chosen.sr].some(
            (d) => d && d.displaySetInstanceUID === ds.displaySetInstanceUID) ? 'yes' : 'no';
        });
    },
    getHangingProtocolModule: () => [{ name: ctWithStones.id, protocol: ctWithStones }],
    getCommandsModule: ({ servicesManager, commandsManager }) => {
      const services = servicesManager.services;
      return {
        definitions: {
          uronodeOpenOnStones: command(() => openOnStones({ servicesManager, commandsManager })),
          uronodeShowStoneList: command(() => services.panelService.activatePanel(MEASUREMENTS_PANEL, true)),
          // The paper's "Tag on": show or hide the DICOM tags in the viewport corners.
          uronodeToggleTags: command(() => {
            document.querySelectorAll('.viewport-overlay').forEach((e) => e.classList.toggle('hidden'));
          }),
          // "Sync Viewports": zoom, pan and slice linked between the CT and the overlay series, or not.
          uronodeToggleSync: command(() => {
            state.synced = !state.synced;
            for (const id of ['uronode-zoompan', 'uronode-slice']) {
              const sync = services.syncGroupService.getSynchronizer(id);
              if (sync) sync.setEnabled(state.synced);
            }
          }),
          // "Select active layer": CT and mask, CT only, mask only.
          uronodeNextLayer: command(() => {
            state.layer = { both: 'ct', ct: 'mask', mask: 'both' }[state.layer];
            applyLayers(services);
          }),
          // "Overlay": the stone mask and the stone boxes over the CT, on or off.
          uronodeToggleOverlay: command(() => {
            state.overlay = !state.overlay;
            applyLayers(services);
          }),
          // "Layer Properties": the mask's opacity, a step down or up.
          uronodeMaskOpacity: command(({ step }) => {
            state.maskOpacity = Math.max(0, Math.min(MASK_OPACITY.length - 1, state.maskOpacity + step));
            services.segmentationService.setStyle({ type: 'Labelmap' }, { fillAlpha: MASK_OPACITY[state.maskOpacity] });
            render(services);
          }),
        },
        defaultContext: 'VIEWER',
      };
    },
  };
  const hotkey = (commandName, label, key, commandOptions) =>
    ({ commandName, commandOptions, label, keys: [key], isEditable: true });
  window.config = {
    routerBasename: '/',
    extensions: [uronode],
    modes: [],
    // The basic viewer (the study list's double click, /viewer?StudyInstanceUIDs=...) chooses between our
    // layout and OHIF's default by the study: ours needs the node's results (required rule above).
    modesConfiguration: {
      '@ohif/mode-longitudinal': { hangingProtocol: { $set: ['uronode-ct-overlay', 'default'] } },
    },
    customizationService: [
      { 'ohif.tours': { $set: [] } },  // no tour over the images
      { autoCineModalities: { $set: [] } },  // no cine player over the overlay series (modality OT)
      {
        'ohif.hotkeyBindings': {
          $push: [
            hotkey('uronodeToggleTags', 'Tag on/off', 't'),
            hotkey('uronodeToggleSync', 'Sync viewports on/off', 'y'),
            hotkey('uronodeNextLayer', 'Active layer: both, CT, mask', 'l'),
            hotkey('uronodeToggleOverlay', 'Overlay (mask and boxes) on/off', 'o'),
            hotkey('uronodeMaskOpacity', 'Mask opacity down', '[', { step: -1 }),
            hotkey('uronodeMaskOpacity', 'Mask opacity up', ']', { step: 1 }),
          ],
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


MANIFEST_LINK = re.compile(r"""<link\b(?=[^>]*\brel=["']?manifest["'\s>])(?![^>]*\bcrossorigin\b)""", re.IGNORECASE)


def index_html(html: str) -> str:
    """OHIF's ``index.html`` as the node serves it: its web-app manifest link asks for credentials
    (``crossorigin="use-credentials"``). A browser fetches a manifest without credentials otherwise, so behind
    ``dicomweb.auth = basic`` every opening of the viewer was refused twice (HTTP 401) and written to the audit
    log as a failed authentication, a false alarm for whoever watches it (probe 17)."""
    return MANIFEST_LINK.sub('<link crossorigin="use-credentials"', html)


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
        if path and candidate.is_file() and candidate.is_relative_to(root) and candidate != index:
            return FileResponse(candidate)
        return Response(index_html(index.read_text(encoding="utf-8")), media_type="text/html",
                        headers={"Cache-Control": "no-cache"})

    return router

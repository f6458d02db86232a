"""From DICOM CT instances to urinary-stone findings. No network.

Stages, each handing the next a frozen dataclass::

    volume = inference.volume.load_volume(paths)          # Volume, or VolumeError(reason)
    pipeline = inference.pipeline.Pipeline("default")     # once per worker: loads the model
    findings = pipeline.run(volume)                       # Findings (stones, boxes, mask)
    rgb = inference.preview.render_slice(volume, findings, k)   # red stones, green boxes

Heavy imports (TensorFlow) happen only when a model is loaded. This is the runtime
only: what makes and measures a model (generated series, training, evaluation) is
the model lab, ``lab``, which imports this package and is never imported by it.
"""

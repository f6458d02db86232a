"""From DICOM CT instances to urinary-stone findings. No network.

Stages, each handing the next a frozen dataclass:
``volume.load_volume`` -> ``Volume`` -> ``pipeline.Pipeline.run`` -> ``Findings``.
Heavy imports (TensorFlow) happen only when a model is loaded.
"""

"""The model lab: what makes and measures a model, never run by the node.

Generated series (``synth``, its steps in ``abdomen``), training sets (``dataset``,
``augment``, ``labelled``, ``realimages``), training (``train``), evaluation (``evaluate``, ``imageeval``), the
experiment runner (``experiment``) and their commands under ``uronode`` (``cli``: ``synth``,
``train``, ``evaluate``, ``experiment``).

It builds on the runtime (``inference``: candidates, network, pipeline) and the core; the runtime,
the services and the node's serving path never import it (the import contracts in
``pyproject.toml`` check both).
"""

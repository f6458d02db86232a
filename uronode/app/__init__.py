"""The node's top layer: its composition (:mod:`.node`), the worker, delivery's dispatch and the CLI.

Layers, one way down (``docs/architecture.md``; checked by the import contract in
``pyproject.toml``): this package may import the model lab (``lab``, from the CLI
only), the services (``scp``, ``dicomweb``, ``inference``) and the core (the rest of
``uronode``); nothing imports it but ``uronode.__main__``.
"""

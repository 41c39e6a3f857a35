"""The shipped YAML configs (``<recipe>/tiny_cpu.yaml``, ``<recipe>/<size>_<res>.yaml``, add-ons).

A package only so the wheel carries them and ``importlib.resources`` finds them; the console script resolves
``--config sid2/tiny_cpu`` here when no such file exists (``lightning_modules.cli.resolve_config``).
"""

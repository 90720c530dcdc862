"""Data: loaders (I/O), presets and formatters (pure), tokenization and packing (torch).

Nothing is imported here so that `data.presets` stays importable without heavy packages.
"""

"""The ``rsscgeo`` command line: one module per command, heavy imports inside commands."""

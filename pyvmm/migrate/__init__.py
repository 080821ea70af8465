"""Save, restore and live migration of a VM.

- ``dirty_scan``: which guest pages changed since they were last sent (C and Python
  backends with the same answers) and XBZRLE page deltas.
- ``stream``: the versioned stream of typed, checksummed records that carries a VM
  (specified in docs/migration-stream.md).
"""

"""Save, restore and live migration of a VM.

- ``dirty_scan``: which guest pages changed since they were last sent (C and Python
  backends with the same answers) and XBZRLE page deltas.
- ``stream``: the versioned stream of typed, checksummed records that carries a VM
  (specified in docs/migration-stream.md).
- ``session``: the live-migration conversation on top of the stream (control records,
  the destination's answer); ``precopy``: the source (rounds while the guest runs, then
  stop-and-copy); ``receiver``: the destination (one connection, checked whole).
"""

"""Snapshots: root filesystems as layered directories (overlayfs) or full copies (native)."""

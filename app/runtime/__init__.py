"""Tasks: containers' processes under a real OCI runtime (runc or crun), supervised by conmon."""

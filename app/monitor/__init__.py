"""The monitor: cgroup figures polled per task, OOM kills noticed at once, Prometheus export."""

"""Event topics, named as containerd's (`/containers/create`, `/tasks/exit`, ...)."""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    NAMESPACE_CREATE = "/namespaces/create"
    NAMESPACE_UPDATE = "/namespaces/update"
    NAMESPACE_DELETE = "/namespaces/delete"
    CONTAINER_CREATE = "/containers/create"
    CONTAINER_UPDATE = "/containers/update"
    CONTAINER_DELETE = "/containers/delete"
    IMAGE_CREATE = "/images/create"
    IMAGE_UPDATE = "/images/update"
    IMAGE_DELETE = "/images/delete"
    CONTENT_DELETE = "/content/delete"
    SNAPSHOT_PREPARE = "/snapshot/prepare"
    SNAPSHOT_COMMIT = "/snapshot/commit"
    SNAPSHOT_REMOVE = "/snapshot/remove"
    TASK_CREATE = "/tasks/create"
    TASK_START = "/tasks/start"
    TASK_EXIT = "/tasks/exit"
    TASK_DELETE = "/tasks/delete"
    TASK_OOM = "/tasks/oom"
    TASK_PAUSED = "/tasks/paused"
    TASK_RESUMED = "/tasks/resumed"
    TASK_EXEC_ADDED = "/tasks/exec-added"
    TASK_EXEC_STARTED = "/tasks/exec-started"

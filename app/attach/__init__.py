"""Attach: one process's stdin, stdout and stderr to many clients, and its terminal's size.

`conmon.py` speaks to conmon's attach socket and control fifo; `hub.py` fans one
process's output out to the attached clients, each with a bounded queue; `channels.py`
is Kubernetes' channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`), apart from
the streams it carries (as Kubernetes' `remotecommand`); `service.py` checks that a
process can be attached to and opens the hub. Nothing here knows HTTP or WebSockets'
transport: `app/api/attach.py` does.
"""

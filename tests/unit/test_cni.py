"""The CNI exec protocol client (`app/network/cni.py`) against plugins that are small shell
scripts, and the resolv.conf a networked task gets (`app/network/files.py`).

The scripts are real executables run the way the daemon runs the real plugins: each logs
what it was given (its CNI_* environment and its stdin) so the tests can see the chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.network.cni import Chain, CNIError, Invocation, first_ip
from app.network.files import resolv_conf

pytestmark = pytest.mark.anyio

WHERE = Invocation("task-1", "/run/netns/none", "eth0")

# Records env and stdin to $LOG_DIR/<type>.<command>.json, prints a result naming itself.
RECORDING = """#!/bin/sh
input=$(cat)
printf '{"command":"%s","id":"%s","netns":"%s","ifname":"%s","path":"%s","stdin":%s}' \\
  "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH" "$input" \\
  > "{log}/{name}.$CNI_COMMAND.json"
echo "$CNI_COMMAND {name}" >> "{log}/order"
[ "$CNI_COMMAND" = ADD ] && echo '{result}'
exit 0
"""

FAILING = """#!/bin/sh
cat >/dev/null
echo '{"cniVersion":"1.0.0","code":11,"msg":"{msg}","details":"more"}'
exit 1
"""


def plugin(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)


def recording(directory: Path, log: Path, name: str, result: dict[str, object]) -> None:
    plugin(directory, name, RECORDING.replace("{log}", str(log)).replace("{name}", name)
           .replace("{result}", json.dumps(result)))


RESULT: dict[str, object] = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "br0", "mac": "aa:aa:aa:aa:aa:aa"},
                   {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/none"}],
    "ips": [{"interface": 1, "address": "10.9.0.2/24", "gateway": "10.9.0.1"}],
}


async def test_add_chains_prev_result_and_del_runs_in_reverse(tmp_path: Path) -> None:
    plugins, log = tmp_path / "plugins", tmp_path / "log"
    plugins.mkdir()
    log.mkdir()
    recording(plugins, log, "first", RESULT)
    recording(plugins, log, "second", {**RESULT, "by": "second"})
    chain = Chain("net", [{"type": "first", "x": 1}, {"type": "second"}], [tmp_path / "nowhere", plugins])

    result = await chain.add(WHERE)
    assert result["by"] == "second"
    first = json.loads((log / "first.ADD.json").read_text())
    second = json.loads((log / "second.ADD.json").read_text())
    assert (first["id"], first["netns"], first["ifname"]) == ("task-1", "/run/netns/none", "eth0")
    assert first["path"] == f"{tmp_path / 'nowhere'}:{plugins}"
    assert first["stdin"] == {"cniVersion": "1.0.0", "name": "net", "type": "first", "x": 1}
    assert second["stdin"]["prevResult"] == RESULT and second["stdin"]["name"] == "net"

    assert await chain.delete(WHERE, result) == []
    assert (log / "order").read_text().split("\n")[2:4] == ["DEL second", "DEL first"]
    assert json.loads((log / "first.DEL.json").read_text())["stdin"]["prevResult"] == result
    assert first_ip(result) == ("10.9.0.2", "10.9.0.1", "02:00:00:00:00:02")


async def test_a_plugin_error_is_parsed_and_a_missing_plugin_named(tmp_path: Path) -> None:
    plugin(tmp_path, "bad", FAILING.replace("{msg}", "no way"))
    with pytest.raises(CNIError) as failed:
        await Chain("net", [{"type": "bad"}], [tmp_path]).add(WHERE)
    assert (failed.value.code, failed.value.msg, failed.value.details) == (11, "no way", "more")
    assert failed.value.describe() == "CNI plugin bad ADD failed (code 11): no way; more"

    with pytest.raises(CNIError, match=r'failed to find plugin "absent" in path \['):
        await Chain("net", [{"type": "absent"}], [tmp_path]).add(WHERE)


async def test_del_is_idempotent_but_reports_real_failures(tmp_path: Path) -> None:
    plugin(tmp_path, "gone", FAILING.replace("{msg}", "link eth0 not found"))
    plugin(tmp_path, "broken", FAILING.replace("{msg}", "iptables is locked"))
    chain = Chain("net", [{"type": "gone"}, {"type": "absent"}, {"type": "broken"}], [tmp_path])
    failures = await chain.delete(WHERE, None)
    assert [f.plugin for f in failures] == ["broken"]


def test_resolv_conf_keeps_the_hosts_resolvers(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("# comment\nnameserver 192.0.2.53\nsearch example.org\noptions ndots:2\n")
    assert resolv_conf(host, tmp_path / "absent") == "nameserver 192.0.2.53\nsearch example.org\noptions ndots:2\n"


def test_a_loopback_stub_gives_way_to_systemd_resolveds_upstream_list(tmp_path: Path) -> None:
    host, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    host.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n")
    upstream.write_text("nameserver 192.0.2.1\nnameserver 127.0.0.1\nsearch lan\n")
    assert resolv_conf(host, upstream) == "nameserver 192.0.2.1\nsearch lan\n"
    # No upstream list: the loopback server is dropped, search and options stay.
    assert resolv_conf(host, tmp_path / "absent") == "options edns0 trust-ad\nsearch lan\n"

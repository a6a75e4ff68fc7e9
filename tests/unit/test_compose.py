"""Consistency checks for the deployment files (no Docker engine needed).

``docker-compose.yml`` and ``deploy/prometheus.yml`` are parsed with
``yaml.safe_load`` and the ``Dockerfile``'s ENTRYPOINT/CMD is parsed to get the
daemon's ``--root``, ``--state`` and ``--listen`` arguments, so that the volumes,
published port, health check and Prometheus scrape target fail these tests as
soon as they drift from what the image actually runs.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

# Parsed YAML: mappings of whatever the file holds.
Yaml = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
SERVICE = "cargohold"
PROMETHEUS = "prometheus"
PROMETHEUS_CONFIG_TARGET = "/etc/prometheus/prometheus.yml"


# ---------------------------------------------------------------- parsing helpers


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, args) pairs; comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
        pending = ""
    if pending.strip():
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the last build stage (after the last FROM)."""
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert starts, "Dockerfile has no FROM instruction"
    return instructions[starts[-1] :]


def exec_form(args: str) -> list[str]:
    """Arguments of ENTRYPOINT/CMD as argv: JSON exec form, else shell words."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
            f"exec form must be a JSON list of strings: {args!r}"
        )
        return value
    return shlex.split(args)


def image_argv(dockerfile_text: str) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT argv, CMD argv) of the final stage; the last of each wins."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for keyword, args in final_stage(dockerfile_instructions(dockerfile_text)):
        if keyword == "ENTRYPOINT":
            entrypoint = exec_form(args)
        elif keyword == "CMD":
            cmd = exec_form(args)
    return entrypoint, cmd


def option_values(argv: list[str], name: str) -> list[str]:
    """Every value given to ``--name`` in argv, as ``--name v`` or ``--name=v``."""
    values = []
    for i, arg in enumerate(argv):
        if arg == name:
            assert i + 1 < len(argv), f"{name} is the last argument and has no value"
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def single_option(argv: list[str], name: str) -> str:
    values = option_values(argv, name)
    assert len(values) == 1, f"expected exactly one {name} in {argv}, got {values}"
    return values[0]


def parse_volume(entry: str | Yaml) -> Yaml:
    """Normalise a compose volume (short or long syntax) to one Yaml."""
    if isinstance(entry, dict):
        source = entry.get("source")
        kind = entry.get("type") or ("bind" if _is_path(source) else "volume")
        return {
            "type": kind,
            "source": source,
            "target": entry["target"],
            "read_only": bool(entry.get("read_only", False)),
        }
    parts = entry.split(":")
    if len(parts) == 1:
        return {
            "type": "volume",
            "source": None,
            "target": parts[0],
            "read_only": False,
        }
    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) > 2 else []
    return {
        "type": "bind" if _is_path(source) else "volume",
        "source": source,
        "target": target,
        "read_only": "ro" in modes,
    }


def _is_path(source: str | None) -> bool:
    return source is not None and source.startswith(("/", ".", "~"))


def container_ports(entry: str | int | Yaml) -> tuple[int, str | None]:
    """(container port, published host port) of a compose ``ports`` entry."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return int(entry["target"]), None if published is None else str(published)
    if isinstance(entry, int):
        return entry, None
    spec = entry.split("/", 1)[0]
    # [host_ip:][host_port:]container_port ; host_ip may be bracketed IPv6.
    if spec.startswith("["):
        spec = spec[spec.index("]") + 2 :]
    parts = spec.split(":")
    host = parts[-2] if len(parts) >= 2 else None
    return int(parts[-1]), host


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> Yaml:
    assert COMPOSE.is_file(), f"{COMPOSE} is missing"
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a YAML mapping"
    assert isinstance(data.get("services"), dict), (
        "docker-compose.yml has no services mapping"
    )
    return data


@pytest.fixture(scope="module")
def service(compose: Yaml) -> Yaml:
    assert SERVICE in compose["services"], (
        f"no '{SERVICE}' service in docker-compose.yml"
    )
    found: Yaml = compose["services"][SERVICE]
    return found


@pytest.fixture(scope="module")
def prometheus(compose: Yaml) -> Yaml:
    assert PROMETHEUS in compose["services"], (
        f"no '{PROMETHEUS}' service in docker-compose.yml"
    )
    found: Yaml = compose["services"][PROMETHEUS]
    return found


@pytest.fixture(scope="module")
def argv() -> list[str]:
    """The daemon's full argv in the image: ENTRYPOINT + CMD."""
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    entrypoint, cmd = image_argv(DOCKERFILE.read_text())
    assert entrypoint, "Dockerfile has no ENTRYPOINT"
    assert cmd, "Dockerfile has no CMD"
    return entrypoint + cmd


@pytest.fixture(scope="module")
def serve_args(argv: list[str]) -> list[str]:
    assert "cargohold" in argv, (
        f"the image does not run the cargohold console script: {argv}"
    )
    rest = argv[argv.index("cargohold") + 1 :]
    assert rest[:1] == ["serve"], f"the image does not run `cargohold serve`: {argv}"
    return rest[1:]


@pytest.fixture(scope="module")
def tcp_listen(serve_args: list[str]) -> tuple[str, int]:
    tcp = [u for u in option_values(serve_args, "--listen") if u.startswith("tcp://")]
    assert len(tcp) == 1, f"expected exactly one tcp:// --listen in the CMD, got {tcp}"
    url = urlsplit(tcp[0])
    assert url.port is not None, f"tcp listen URL has no port: {tcp[0]}"
    return url.hostname or "", url.port


@pytest.fixture(scope="module")
def service_volumes(service: Yaml) -> list[Yaml]:
    return [parse_volume(v) for v in service.get("volumes", [])]


@pytest.fixture(scope="module")
def prometheus_config_path(prometheus: Yaml) -> Path:
    mounts = [
        parse_volume(v)
        for v in prometheus.get("volumes", [])
        if parse_volume(v)["target"] == PROMETHEUS_CONFIG_TARGET
    ]
    assert len(mounts) == 1, (
        f"prometheus must mount exactly one {PROMETHEUS_CONFIG_TARGET}"
    )
    mount = mounts[0]
    assert mount["type"] == "bind", (
        f"prometheus config must be a bind mount, got {mount}"
    )
    assert mount["read_only"], f"prometheus config should be mounted read-only: {mount}"
    return (REPO / str(mount["source"])).resolve()


@pytest.fixture(scope="module")
def scrape_job(prometheus_config_path: Path) -> Yaml:
    assert prometheus_config_path.is_file(), (
        f"prometheus mounts {prometheus_config_path}, which is not in the repo"
    )
    config = yaml.safe_load(prometheus_config_path.read_text())
    assert isinstance(config, dict), f"{prometheus_config_path} must be a YAML mapping"
    jobs = [
        j for j in config.get("scrape_configs") or [] if j.get("job_name") == SERVICE
    ]
    assert len(jobs) == 1, (
        f"expected one scrape job named '{SERVICE}' in {prometheus_config_path}"
    )
    job: Yaml = jobs[0]
    return job


# ---------------------------------------------------------------- parser self-tests


def test_dockerfile_parser_reads_last_stage_and_both_forms() -> None:
    text = (
        'FROM a AS build\nCMD ["wrong"]\n# comment\nFROM b\n'
        'ENTRYPOINT ["tini", "--", \\\n  "cargohold"]\n'
        "CMD serve --root=/r --listen 'tcp://0.0.0.0:1'\n"
    )
    entrypoint, cmd = image_argv(text)
    assert entrypoint == ["tini", "--", "cargohold"], (
        f"entrypoint misparsed: {entrypoint}"
    )
    assert cmd == ["serve", "--root=/r", "--listen", "tcp://0.0.0.0:1"], (
        f"cmd misparsed: {cmd}"
    )
    assert option_values(cmd, "--root") == ["/r"], "--root=VALUE form not recognised"
    assert option_values(cmd, "--state") == [], "absent option should give no value"


def test_compose_entry_parsers() -> None:
    assert container_ports("127.0.0.1:8080:9000/tcp") == (9000, "8080"), (
        "ip:host:container"
    )
    assert container_ports("8080") == (8080, None), "container port only"
    assert container_ports({"target": 1, "published": 2}) == (1, "2"), (
        "long port syntax"
    )
    assert parse_volume("data:/x")["type"] == "volume", "bare name is a named volume"
    assert parse_volume("./f:/x:ro") == {
        "type": "bind",
        "source": "./f",
        "target": "/x",
        "read_only": True,
    }, "relative bind with :ro"


# ---------------------------------------------------------------- compose: cargohold


def test_compose_parses_with_both_services(compose: Yaml) -> None:
    for name in (SERVICE, PROMETHEUS):
        assert name in compose["services"], (
            f"service '{name}' missing from docker-compose.yml"
        )


def test_cargohold_builds_from_repo_dockerfile(service: Yaml) -> None:
    build = service.get("build")
    assert build is not None, "cargohold service must build the image"
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = (
        "Dockerfile"
        if isinstance(build, str)
        else build.get("dockerfile", "Dockerfile")
    )
    assert (REPO / context).resolve() == REPO, (
        f"build context must be the repo root, got {context}"
    )
    assert (REPO / context / dockerfile).is_file(), (
        f"build uses {dockerfile}, which is missing"
    )


def test_cargohold_is_privileged(service: Yaml) -> None:
    assert service.get("privileged") is True, "runc needs a privileged container"


def test_cgroup_tree_mounted_read_write(service_volumes: list[Yaml]) -> None:
    mounts = [v for v in service_volumes if v["target"] == "/sys/fs/cgroup"]
    assert mounts, "/sys/fs/cgroup is not mounted into the cargohold container"
    assert mounts[0]["source"] == "/sys/fs/cgroup", (
        f"must mount the host cgroup tree: {mounts[0]}"
    )
    assert not mounts[0]["read_only"], "/sys/fs/cgroup must be mounted read-write"


def test_cmd_root_dir_is_a_named_volume(
    serve_args: list[str], service_volumes: list[Yaml], compose: Yaml
) -> None:
    root = single_option(serve_args, "--root")
    mounts = [v for v in service_volumes if v["target"] == root]
    assert mounts, (
        f"--root {root} from the Dockerfile CMD is not a volume in docker-compose.yml"
    )
    assert mounts[0]["type"] == "volume" and mounts[0]["source"], (
        f"--root {root} should be a named volume (overlayfs needs a real "
        f"filesystem): {mounts[0]}"
    )


def test_cmd_state_dir_is_bind_mounted_from_host(
    serve_args: list[str], service_volumes: list[Yaml]
) -> None:
    state = single_option(serve_args, "--state")
    mounts = [v for v in service_volumes if v["target"] == state]
    assert mounts, (
        f"--state {state} from the Dockerfile CMD is not mounted in docker-compose.yml"
    )
    assert mounts[0]["type"] == "bind", (
        f"--state {state} should be a host bind mount: {mounts[0]}"
    )
    assert not mounts[0]["read_only"], f"--state {state} must be writable"


def test_unix_socket_lives_in_the_mounted_state_dir(serve_args: list[str]) -> None:
    state = single_option(serve_args, "--state").rstrip("/")
    unix = [u for u in option_values(serve_args, "--listen") if u.startswith("unix://")]
    assert unix, "the CMD should also listen on a unix socket"
    for url in unix:
        path = url[len("unix://") :]
        assert path.startswith(state + "/"), (
            f"unix socket {path} is outside the state dir {state}, "
            "so it is not visible on the host"
        )


def test_named_volumes_declared_at_top_level(compose: Yaml) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    for name, svc in compose["services"].items():
        for entry in svc.get("volumes", []):
            vol = parse_volume(entry)
            if vol["type"] == "volume" and vol["source"]:
                assert vol["source"] in declared, (
                    f"service {name} uses volume '{vol['source']}', "
                    "which is not declared under top-level volumes"
                )


def test_tcp_listener_reachable_from_outside_the_container(
    tcp_listen: tuple[str, int],
) -> None:
    host, _ = tcp_listen
    assert host in ("0.0.0.0", "::", ""), (
        f"tcp listener on {host!r} is unreachable via ports"
    )


def test_published_port_is_the_tcp_listen_port(
    service: Yaml, tcp_listen: tuple[str, int]
) -> None:
    _, port = tcp_listen
    targets = [container_ports(p)[0] for p in service.get("ports", [])]
    assert port in targets, (
        f"tcp listen port {port} is not published; ports map {targets}"
    )


def test_dockerfile_exposes_the_tcp_listen_port(tcp_listen: tuple[str, int]) -> None:
    _, port = tcp_listen
    exposed = {
        int(word.split("/")[0])
        for kw, args in final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
        if kw == "EXPOSE"
        for word in args.split()
    }
    assert port in exposed, (
        f"Dockerfile EXPOSE {sorted(exposed)} lacks tcp listen port {port}"
    )


def test_healthchecks_probe_healthz_on_listen_port(
    service: Yaml, tcp_listen: tuple[str, int]
) -> None:
    _, port = tcp_listen
    url_part = f":{port}/healthz"
    check = service.get("healthcheck") or {}
    test = check.get("test")
    assert test, "cargohold service needs a healthcheck"
    command = test if isinstance(test, str) else " ".join(test)
    assert url_part in command, f"compose healthcheck must hit {url_part}: {command}"
    healthchecks = [
        args
        for kw, args in final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
        if kw == "HEALTHCHECK"
    ]
    assert healthchecks, "Dockerfile has no HEALTHCHECK"
    assert url_part in healthchecks[-1], f"Dockerfile HEALTHCHECK must hit {url_part}"


def test_metrics_are_public_for_tokenless_scrape(
    serve_args: list[str], scrape_job: Yaml
) -> None:
    has_auth = any(
        k in scrape_job for k in ("authorization", "bearer_token", "bearer_token_file")
    )
    if not has_auth:
        assert "--metrics-public" in serve_args, (
            "prometheus scrapes without a token, so the CMD needs --metrics-public"
        )


# ---------------------------------------------------------------- compose: prometheus


def test_prometheus_service(prometheus: Yaml) -> None:
    image = prometheus.get("image", "")
    assert image.split(":")[0] == "prom/prometheus", (
        f"unexpected prometheus image {image!r}"
    )
    depends = prometheus.get("depends_on") or []
    assert SERVICE in depends, f"prometheus must depend on {SERVICE}, has {depends}"
    targets = [container_ports(p)[0] for p in prometheus.get("ports", [])]
    assert 9090 in targets, f"prometheus port 9090 is not published: {targets}"


def test_prometheus_config_file_exists(prometheus_config_path: Path) -> None:
    assert prometheus_config_path.is_file(), (
        f"prometheus mounts {prometheus_config_path}, which is not in the repo"
    )
    assert REPO in prometheus_config_path.parents, (
        "prometheus config must come from the repo"
    )


def test_scrape_target_is_the_service_and_listen_port(
    scrape_job: Yaml, compose: Yaml, tcp_listen: tuple[str, int]
) -> None:
    _, port = tcp_listen
    targets = [
        t
        for sc in scrape_job.get("static_configs") or []
        for t in sc.get("targets", [])
    ]
    assert targets, "the cargohold scrape job has no static targets"
    for target in targets:
        host, _, target_port = target.rpartition(":")
        assert host in compose["services"] and host == SERVICE, (
            f"scrape target host {host!r} is not the compose service '{SERVICE}'"
        )
        assert target_port == str(port), (
            f"scrape target port {target_port} is not the tcp listen port {port}"
        )
    assert scrape_job.get("metrics_path", "/metrics") == "/metrics", (
        "metrics_path must be /metrics"
    )
    assert scrape_job.get("scheme", "http") == "http", "the daemon serves plain HTTP"

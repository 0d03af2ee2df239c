"""docker/compose.yaml and docker/envoy.yaml, checked without Docker.

No Docker daemon runs where the suite does, so the deployment files are parsed and held
against each other and against the server's real `nearcat serve` flags: a renamed flag, a
replica left out of Envoy, or a store that stopped being durable fails here rather than at
`docker compose up`.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from server.cli import build_parser, load_settings
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.settings import Settings
from tests.helpers import ROOT

DOCKER = ROOT / "docker"
# The shipped deployment runs three; docs/deployment.md says how to run more (and to change
# this number with them).
REPLICA_COUNT = 3
STORE = "valkey"
BALANCER = "envoy"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Nearcat"].full_name
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# -- reading the files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def replicas(services: dict[str, dict[str, Any]]) -> list[str]:
    """The services that run the nearcat image, i.e. the one image built here."""
    built = {service.get("image") for service in services.values() if "build" in service}
    assert len(built) == 1 and None not in built, "one image is built here, named: nearcat's"
    return sorted(name for name, service in services.items() if service.get("image") in built)


@pytest.fixture(scope="module")
def envoy(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The config Envoy really loads: the file mounted where its `-c` points."""
    path = envoy_config_path(services[BALANCER])
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def envoy_config_path(service: dict[str, Any]) -> Path:
    command = as_argv(service.get("command"))
    target = command[command.index("-c") + 1] if "-c" in command else "/etc/envoy/envoy.yaml"
    sources = [source for source, mounted in volumes(service) if mounted == target]
    assert len(sources) == 1, f"envoy reads {target}, which no volume provides"
    assert sources[0].startswith("."), "envoy's config should be the file next to compose.yaml"
    path = (DOCKER / sources[0]).resolve()
    assert path.is_file(), f"{path} is mounted but does not exist"
    return path


def as_argv(command: str | list[str] | None) -> list[str]:
    """Compose takes a command as a list or as one shell-like string."""
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Compose takes a mapping or a list of KEY=VALUE."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each mount, short ("src:dst[:mode]") or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            parts = str(volume).split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return mounts


def named_volume(source: str) -> bool:
    """A bind mount names a path; anything else (but an anonymous volume) is a named one."""
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    published = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            host, target = str(port.get("host_ip", "")), int(port["target"])
            published.append((host, int(port.get("published", target)), target))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        if len(parts) == 1:
            continue  # a bare container port: published on a random host port
        host = parts[0] if len(parts) == 3 else ""
        published.append((host, int(parts[-2]), int(parts[-1])))
    return published


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each dependency with its condition (a bare list means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def serve_parser() -> argparse.ArgumentParser:
    """`nearcat serve`'s own parser, so the flags checked are the ones that exist today."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]  # type: ignore[no-any-return]
    raise AssertionError("nearcat has no serve command")


def serve_flags() -> dict[str, str]:
    """NEARCAT_<NAME> -> --name, for every flag of `nearcat serve`."""
    flags = {
        option
        for action in serve_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert "--redis-url" in flags and "--data-dir" in flags
    return {"NEARCAT_" + flag[2:].replace("-", "_").upper(): flag for flag in flags}


def replica_port(service: dict[str, Any]) -> int:
    port = environment(service).get("NEARCAT_PORT")
    return int(port) if port else int(Settings.model_fields["port"].default)


def nearcat_cluster(envoy: dict[str, Any]) -> dict[str, Any]:
    """The cluster the gRPC listener routes every call to."""
    routes = [
        route
        for listener in envoy["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for network_filter in chain["filters"]
        for host in network_filter["typed_config"]["route_config"]["virtual_hosts"]
        for route in host["routes"]
    ]
    names = {route["route"]["cluster"] for route in routes}
    assert len(names) == 1, f"calls should all go to one cluster of replicas, not {names}"
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    return clusters[names.pop()]  # type: ignore[no-any-return]


# -- the compose file ----------------------------------------------------------------------


def test_the_expected_services_and_each_can_be_started(
    services: dict[str, dict[str, Any]], replicas: list[str]
) -> None:
    assert set(services) == {STORE, BALANCER, *replicas}
    assert replicas == [f"nearcat-{i}" for i in range(1, REPLICA_COUNT + 1)]
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"


def test_pulled_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    """A floating tag would change Valkey or Envoy under a deployment that was tested."""
    assert services[STORE]["image"].startswith("valkey/valkey:8")
    assert services[BALANCER]["image"].startswith("envoyproxy/envoy:v1.")
    for name in (STORE, BALANCER):
        tag = services[name]["image"].rpartition(":")[2]
        assert tag[:1].isdigit() or tag[:2] == "v1", f"{name}: unpinned tag {tag!r}"


def test_replicas_run_one_image_built_once_from_the_dockerfile(
    services: dict[str, dict[str, Any]], replicas: list[str]
) -> None:
    builds = [services[name]["build"] for name in replicas if "build" in services[name]]
    assert len(builds) == 1, "the image should be built once, by one replica"
    context = (DOCKER / builds[0]["context"]).resolve()
    assert context == ROOT, "the Dockerfile copies the repository: its context is the root"
    assert (context / builds[0]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    for name in replicas:
        if "build" not in services[name]:
            assert services[name].get("pull_policy") == "never", f"{name}: built, not pulled"


def test_each_replica_is_a_valid_serve_configuration(
    services: dict[str, dict[str, Any]], replicas: list[str]
) -> None:
    """Every NEARCAT_* variable is a real flag, and their values pass the server's checks."""
    flags = serve_flags()
    for name in replicas:
        env = {k: v for k, v in environment(services[name]).items() if k.startswith("NEARCAT_")}
        unknown = sorted(set(env) - set(flags))
        assert not unknown, f"{name}: `nearcat serve` has no such setting: {unknown}"
        argv = [part for key, value in env.items() for part in (flags[key], value)]
        for arg in as_argv(services[name].get("command")):
            assert not arg.startswith("--") or arg.split("=")[0] in flags.values(), arg
        settings = load_settings(serve_parser().parse_args(argv))
        assert settings.host == "0.0.0.0", f"{name} must listen beyond its container"


def test_replicas_share_the_store_and_keep_their_own_data(
    services: dict[str, dict[str, Any]], replicas: list[str]
) -> None:
    command = as_argv(services[STORE].get("command"))
    store_port = int(command[command.index("--port") + 1]) if "--port" in command else 6379
    data_volumes = []
    for name in replicas:
        env = environment(services[name])
        url = urlsplit(env["NEARCAT_REDIS_URL"])
        assert url.scheme == "redis" and url.hostname == STORE, f"{name}: {url.geturl()}"
        assert (url.port or 6379) == store_port, f"{name} points at another port than Valkey's"
        data_dir = env["NEARCAT_DATA_DIR"]
        mounted = [source for source, target in volumes(services[name]) if target == data_dir]
        assert len(mounted) == 1 and named_volume(mounted[0]), f"{name}: {data_dir} not kept"
        data_volumes.append(mounted[0])
    assert len(set(data_volumes)) == len(replicas), "replicas must not share a --data-dir"


def test_replicas_share_one_blob_store(
    services: dict[str, dict[str, Any]], replicas: list[str]
) -> None:
    """Reference images are read by every replica (a reindex, GetReferenceImage), and a
    server refuses a blob store that is not its store's: all must mount the same one."""
    shared = set()
    for name in replicas:
        env = environment(services[name])
        blob_dir = env.get("NEARCAT_BLOB_URL", "")
        assert blob_dir.startswith("/"), f"{name}: NEARCAT_BLOB_URL must be a shared directory"
        assert not blob_dir.startswith(env["NEARCAT_DATA_DIR"]), f"{name}: inside its data dir"
        mounted = [source for source, target in volumes(services[name]) if target == blob_dir]
        assert len(mounted) == 1 and named_volume(mounted[0]), f"{name}: {blob_dir} not a volume"
        shared.add((mounted[0], blob_dir))
    assert len(shared) == 1, f"replicas mount different blob stores: {shared}"


def test_the_store_is_durable(services: dict[str, dict[str, Any]]) -> None:
    """Every acknowledged write is on disk: a reference added is not lost in a crash."""
    command = as_argv(services[STORE]["command"])
    pairs = dict(zip(command, command[1:], strict=False))
    assert pairs.get("--appendonly") == "yes"
    assert pairs.get("--appendfsync") == "always"
    assert any(target == "/data" and named_volume(src) for src, target in volumes(services[STORE]))


def test_dependencies_exist_and_can_be_waited_for(
    services: dict[str, dict[str, Any]], replicas: list[str]
) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition == "service_healthy":  # compose refuses it without a healthcheck
                assert services[dependency].get("healthcheck"), f"{dependency}: no healthcheck"
    for name in replicas:
        assert depends_on(services[name]).get(STORE) == "service_healthy", name
    assert set(depends_on(services[BALANCER])) == set(replicas)


def test_volumes_used_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for service in compose["services"].values()
        for source, _ in volumes(service)
        if named_volume(source)
    }
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"
    assert declared <= used, f"declared but unused: {sorted(declared - used)}"


# -- Envoy ---------------------------------------------------------------------------------


def test_envoy_balances_over_exactly_the_replicas(
    services: dict[str, dict[str, Any]], replicas: list[str], envoy: dict[str, Any]
) -> None:
    cluster = nearcat_cluster(envoy)
    endpoints = [
        lb["endpoint"]["address"]["socket_address"]
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]
    assert sorted(e["address"] for e in endpoints) == sorted(replicas)
    for endpoint in endpoints:
        assert endpoint["port_value"] == replica_port(services[endpoint["address"]])
    assert cluster["type"] in {"STRICT_DNS", "LOGICAL_DNS"}, "replicas are found by name"
    # per call, not per connection: gRPC keeps one connection open for all its calls
    assert cluster.get("lb_policy", "ROUND_ROBIN") in {"ROUND_ROBIN", "LEAST_REQUEST"}


def test_envoy_speaks_http2_to_replicas_and_checks_their_grpc_health(
    services: dict[str, dict[str, Any]], replicas: list[str], envoy: dict[str, Any]
) -> None:
    cluster = nearcat_cluster(envoy)
    options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert "http2_protocol_options" in options["explicit_http_config"]
    checks = [check["grpc_health_check"] for check in cluster["health_checks"]]
    assert checks, "without a gRPC health check a replica that cannot classify gets calls"
    for check in checks:
        assert check.get("service_name", "") in {"", SERVICE_NAME}
    assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
    # compose's own healthcheck asks the same question of the same port
    for name in replicas:
        probe = " ".join(as_argv(services[name]["healthcheck"]["test"]))
        assert SERVICE_NAME in probe and f":{replica_port(services[name])}" in probe, name


def test_envoy_listens_where_compose_publishes_and_keeps_admin_local(
    services: dict[str, dict[str, Any]], envoy: dict[str, Any]
) -> None:
    published = published_ports(services[BALANCER])
    for listener in envoy["static_resources"]["listeners"]:
        port = listener["address"]["socket_address"]["port_value"]
        assert any(target == port for _, _, target in published), f"{port} is not published"
    admin = envoy["admin"]["address"]["socket_address"]
    if admin["address"] != "127.0.0.1":
        for host, _, target in published:
            if target == admin["port_value"]:
                assert host == "127.0.0.1", "Envoy's admin must not be reachable from afar"

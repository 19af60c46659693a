"""gateway.webrtc in the chart, rendered by the real helm: the UDP port range reaches the gateway (env), the
Service (every port listed) or the node's network, the NetworkPolicy and the TURN Secret; values that cannot
work (a reversed or oversized range, no public address, several replicas behind one UDP Service, a static
and a shared TURN secret together) are refused at render time with a message that says what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart import (
    CHART,
    KUBE_VERSIONS,
    Helm,
    by_kind,
    component,
    deployments,
    validate_strict,
    write_values,
)

SERVICE_MODE = """
gateway:
  enabled: true
  replicas: 1
  maxSessions: 20
  webrtc:
    enabled: true
    udpPortRange: {min: 40000, max: 40019}
    publicIP: 203.0.113.10
    iceServers: ["stun:stun.example.com:3478", "turns:turn.example.com"]
    clientIceServers: ["stun:stun.l.example.net:19302", "turns:turn.example.com"]
    turn: {username: agent, existingSecret: turn-secret, credentialKey: password}
"""
HOST_MODE = """
gateway:
  enabled: true
  replicas: 3
  maxSessions: 50
  webrtc:
    enabled: true
    expose: hostNetwork
    udpPortRange: {min: 50000, max: 50999}
    publicIPFromNode: true
"""


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def gateway_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"]


@pytest.fixture(scope="module")
def service_mode(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm.render(values=[write_values(tmp_path_factory.mktemp("rtc"), "service.yaml", SERVICE_MODE)])


@pytest.fixture(scope="module")
def host_mode(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm.render(values=[write_values(tmp_path_factory.mktemp("rtc"), "host.yaml", HOST_MODE)])


def test_service_mode_lists_every_port_and_advertises_the_public_ip(service_mode: list[dict[str, Any]]) -> None:
    for obj in gateway_objects(service_mode):
        for version in KUBE_VERSIONS:
            validate_strict(obj, version)
    udp = by_kind(service_mode, "Service")["vg-voxgrid-gateway-webrtc"]
    assert udp["spec"]["type"] == "LoadBalancer" and udp["spec"]["externalTrafficPolicy"] == "Local"
    ports = udp["spec"]["ports"]
    assert [(p["port"], p["targetPort"], p["protocol"]) for p in ports] == [(n, n, "UDP") for n in range(40000, 40020)]
    gw = deployments(service_mode)["gateway"]
    e = env(gw)
    assert (e["VOXGRID_GATEWAY_WEBRTC_UDP_PORT_MIN"], e["VOXGRID_GATEWAY_WEBRTC_UDP_PORT_MAX"]) == ("40000", "40019")
    assert e["VOXGRID_GATEWAY_WEBRTC_PUBLIC_IP"] == "203.0.113.10"
    assert e["VOXGRID_GATEWAY_WEBRTC_ICE_ADDRESSES"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert e["VOXGRID_GATEWAY_WEBRTC_ICE_SERVERS"] == "stun:stun.example.com:3478,turns:turn.example.com"
    assert e["VOXGRID_GATEWAY_WEBRTC_CLIENT_ICE_SERVERS"] == "stun:stun.l.example.net:19302,turns:turn.example.com"
    assert e["VOXGRID_GATEWAY_WEBRTC_TURN_USERNAME"] == "agent"
    pod = gw["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork")
    turn = next(v for v in pod["volumes"] if v["name"] == "turn")
    assert turn["secret"]["secretName"] == "turn-secret"
    assert turn["secret"]["items"] == [{"key": "password", "path": "credential"}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "turn")
    assert f"{mount['mountPath']}/credential" == e["VOXGRID_GATEWAY_WEBRTC_TURN_CREDENTIAL_FILE"]


def test_network_policy_opens_the_udp_range_and_turn_over_tls(service_mode: list[dict[str, Any]]) -> None:
    policy = next(p for p in by_kind(service_mode, "NetworkPolicy").values() if component(p) == "gateway")
    ingress = [port for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert {"port": 40000, "endPort": 40019, "protocol": "UDP"} in ingress
    egress = [port for rule in policy["spec"]["egress"] for port in rule["ports"]]
    assert {"protocol": "UDP"} in egress  # ICE checks and media to the callers' candidates
    assert {"port": 5349, "protocol": "TCP"} in egress  # turns: over TLS, default port


def test_host_network_mode_uses_the_node_and_renders_no_udp_service(host_mode: list[dict[str, Any]]) -> None:
    for obj in gateway_objects(host_mode):
        validate_strict(obj, KUBE_VERSIONS[-1])
    assert "vg-voxgrid-gateway-webrtc" not in by_kind(host_mode, "Service")
    gw = deployments(host_mode)["gateway"]
    pod = gw["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert gw["spec"]["replicas"] == 3
    e = env(gw)
    node_ip = {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert e["VOXGRID_GATEWAY_WEBRTC_PUBLIC_IP"] == node_ip and e["VOXGRID_GATEWAY_WEBRTC_ICE_ADDRESSES"] == node_ip
    assert "VOXGRID_GATEWAY_WEBRTC_TURN_CREDENTIAL_FILE" not in e
    assert "VOXGRID_GATEWAY_WEBRTC_CLIENT_ICE_SERVERS" not in e  # the page gets the gateway's list


SHARED_SECRET_MODE = """
gateway:
  enabled: true
  replicas: 1
  maxSessions: 20
  webrtc:
    enabled: true
    udpPortRange: {min: 40000, max: 40019}
    publicIP: 203.0.113.10
    iceServers: ["turn:turn.example.com:3478?transport=udp"]
    clientIceServers: ["turns:turn.example.com"]
    turn:
      sharedSecret: {existingSecret: coturn-auth, key: static-auth-secret}
      credentialTtlSeconds: 900
"""


def test_a_shared_secret_mounts_the_turn_server_s_secret_for_short_lived_credentials(
        helm: Helm, tmp_path: Path) -> None:
    objects = helm.render(values=[write_values(tmp_path, "shared.yaml", SHARED_SECRET_MODE)])
    for obj in gateway_objects(objects):
        validate_strict(obj, KUBE_VERSIONS[-1])
    gw = deployments(objects)["gateway"]
    e = env(gw)
    assert e["VOXGRID_GATEWAY_WEBRTC_TURN_CREDENTIAL_TTL_S"] == "900"
    assert "VOXGRID_GATEWAY_WEBRTC_TURN_CREDENTIAL_FILE" not in e and "VOXGRID_GATEWAY_WEBRTC_TURN_USERNAME" not in e
    pod = gw["spec"]["template"]["spec"]
    turn = next(v for v in pod["volumes"] if v["name"] == "turn")
    assert turn["secret"]["secretName"] == "coturn-auth"
    assert turn["secret"]["items"] == [{"key": "static-auth-secret", "path": "shared-secret"}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "turn")
    assert f"{mount['mountPath']}/shared-secret" == e["VOXGRID_GATEWAY_WEBRTC_TURN_SHARED_SECRET_FILE"]


def test_lint_is_clean_with_webrtc(helm: Helm, tmp_path: Path) -> None:
    done = helm.run("lint", "--strict", str(CHART), "-f", str(write_values(tmp_path, "s.yaml", SERVICE_MODE)))
    assert done.returncode == 0, done.stdout + done.stderr


BASE = ["gateway.enabled=true", "gateway.webrtc.enabled=true", "gateway.replicas=1", "gateway.maxSessions=10"]
REFUSED: dict[str, tuple[list[str], list[str]]] = {
    "range-reversed": (["gateway.webrtc.udpPortRange.min=40100", "gateway.webrtc.udpPortRange.max=40000",
                        "gateway.webrtc.publicIP=203.0.113.10"], ["udpPortRange is reversed", "40100"]),
    "range-too-large-for-a-service": (["gateway.webrtc.udpPortRange.max=40500", "gateway.webrtc.publicIP=203.0.113.10"],
                                      ["501 ports", "service.maxPorts (100)", "expose: hostNetwork"]),
    "service-without-public-ip": ([], ["expose=service needs gateway.webrtc.publicIP"]),
    "service-with-two-replicas": (["gateway.webrtc.publicIP=203.0.113.10", "gateway.replicas=2"],
                                  ["needs gateway.replicas=1 (it is 2)"]),
    "range-smaller-than-max-sessions": (["gateway.webrtc.publicIP=203.0.113.10", "gateway.maxSessions=200"],
                                        ["holds 100 ports but gateway.maxSessions is 200"]),
    "node-port-outside-node-range": (["gateway.webrtc.publicIP=203.0.113.10", "gateway.webrtc.service.type=NodePort"],
                                     ["30000-32767", "40000-40099"]),
    "two-stun-servers": (["gateway.webrtc.publicIP=203.0.113.10",
                          "gateway.webrtc.iceServers={stun:a.example:3478,stun:b.example:3478}"], ["2 STUN"]),
    "turn-without-secret": (["gateway.webrtc.publicIP=203.0.113.10", "gateway.webrtc.iceServers={turn:t.example}"],
                            ["turn.username", "turn.existingSecret", "turn.sharedSecret.existingSecret"]),
    "static-and-shared-turn-secrets": (["gateway.webrtc.publicIP=203.0.113.10", "gateway.webrtc.turn.username=a",
                                        "gateway.webrtc.turn.existingSecret=turn-credential",
                                        "gateway.webrtc.turn.sharedSecret.existingSecret=coturn-auth"],
                                       ["turn.sharedSecret.existingSecret and gateway.webrtc.turn.existingSecret "
                                        "are both set", "Keep one"]),
    "shared-secret-username-with-a-colon": (["gateway.webrtc.publicIP=203.0.113.10",
                                             "gateway.webrtc.turn.username=eu:1",
                                             "gateway.webrtc.turn.sharedSecret.existingSecret=coturn-auth"],
                                            ["turn.username \"eu:1\" contains ':'"]),
    "client-turn-without-secret": (["gateway.webrtc.publicIP=203.0.113.10",
                                    "gateway.webrtc.clientIceServers={turn:t.example}"],
                                   ["clientIceServers has a TURN server (turn:t.example)", "turn.existingSecret"]),
    "host-network-with-both-addresses": (["gateway.webrtc.expose=hostNetwork", "gateway.webrtc.publicIP=203.0.113.10",
                                          "gateway.webrtc.publicIPFromNode=true"], ["not both"]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_values_that_cannot_work_are_refused(helm: Helm, name: str) -> None:
    sets, fragments = REFUSED[name]
    error = helm.refusal(sets=BASE + sets)
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in:\n{error}"


@pytest.mark.parametrize(("text", "fragment"), [
    ("gateway:\n  webrtc:\n    udpPortRange: {min: 80, max: 90}\n", "/gateway/webrtc/udpPortRange/min"),
    ("gateway:\n  webrtc:\n    expose: hostPort\n", "/gateway/webrtc/expose"),
    ("gateway:\n  webrtc:\n    iceServers: ['http://stun.example.com']\n", "/gateway/webrtc/iceServers/0"),
    ("gateway:\n  webrtc:\n    publicIP: voice.example.com\n", "/gateway/webrtc/publicIP"),
    ("gateway:\n  webrtc:\n    clientIceServers: ['https://turn.example.com']\n", "/gateway/webrtc/clientIceServers/0"),
    ("gateway:\n  settings:\n    webrtcPublicIp: 203.0.113.10\n", "webrtcPublicIp"),  # chart-managed
    ("gateway:\n  webrtc:\n    turn: {credentialTtlSeconds: 30}\n", "/gateway/webrtc/turn/credentialTtlSeconds"),
    ("gateway:\n  webrtc:\n    turn: {sharedSecret: {name: x}}\n", "/gateway/webrtc/turn/sharedSecret"),
    ("gateway:\n  settings:\n    webrtcTurnSharedSecretFile: /s\n", "webrtcTurnSharedSecretFile"),  # chart-managed
])
def test_schema_names_the_bad_webrtc_value(helm: Helm, tmp_path: Path, text: str, fragment: str) -> None:
    error = helm.refusal(values=[write_values(tmp_path, "bad.yaml", text)])
    assert fragment in error, error

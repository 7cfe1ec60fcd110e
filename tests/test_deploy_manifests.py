"""The fleet's manifests pass client-side validation against the Kubernetes API schemas (kubernetes-validate,
pinned), and say what the gym's contracts need: stable per-pod addresses, probes on /healthz, the token from
a Secret, resource requests, a non-root user."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.33.0"


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "gym.yaml").read_text()) if d]


def test_every_manifest_validates_strictly():
    for doc in documents():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_an_invalid_manifest_is_refused():
    broken = next(d for d in documents() if d["kind"] == "StatefulSet")
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_statefulset_gives_each_pod_an_address_episode_urls_use():
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents()}
    stateful = by_kind[("StatefulSet", "astra-gym")]
    headless = by_kind[("Service", stateful["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"  # every pod's address under one DNS name (dns+http://...)
    assert by_kind[("Service", "astra-gym")]["spec"]["ports"][0]["port"] == 8000  # one REST address
    pod = stateful["spec"]["template"]["spec"]
    [gym] = pod["containers"]
    args = " ".join(gym["args"])
    assert "--public-url=http://$(POD_NAME).astra-gym-pods.$(POD_NAMESPACE)" in args and "--processes=2" in args
    assert [p["containerPort"] for p in gym["ports"]] == [8000, 8001, 8002]  # the front and each process's MCP port
    assert {p["port"] for p in headless["spec"]["ports"]} == {8000, 8001, 8002}
    assert gym["readinessProbe"]["httpGet"]["path"] == gym["livenessProbe"]["httpGet"]["path"] == "/healthz"
    token = next(e for e in gym["env"] if e["name"] == "ASTRA_GYM_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert gym["resources"]["requests"]["cpu"] and gym["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0


def test_the_containerfile_runs_as_a_user_with_a_healthcheck():
    text = (DEPLOY / "Containerfile").read_text()
    assert "USER 65532" in text and "HEALTHCHECK" in text and "/healthz" in text and 'VOLUME ["/arenas"]' in text
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert len(compose["services"]) == 3
    for service in compose["services"].values():
        port = next(a for a in service["command"] if a.startswith("--port=")).split("=")[1]
        assert f"--public-url=http://127.0.0.1:{port}" in service["command"]  # episode URLs name published ports

"""Deployment manifests, validated offline: no cluster, no container engine.

* ``deploy/k8s`` is rendered by ``deploy/render_k8s.py`` (the kustomize subset it uses) and every
  object is checked against the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships
  (strict: unknown fields fail), KEDA's objects against ``deploy/schemas/keda.json``.
* ``deploy/compose.yaml`` is parsed like compose does (YAML merge keys, ``$`` interpolation) and
  checked for healthchecks, dependency conditions, the GPU reservation and secrets.
* Every ``valueflow ...`` command in either file is parsed by the real click CLI, so a renamed
  subcommand or option, or a bad choice, fails here.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
QUEUES = ("default", "gpu", "api", "refit")
# the oldest Kubernetes the manifests claim (docs/deploy.md) and the newest schemas shipped
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# parameters a TriggerAuthentication may give the redis scaler
REDIS_AUTH_PARAMS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|_KEY$|DATABASE_URL|BROKER_URL|AUTH)", re.I)


# -- helpers ----------------------------------------------------------------------------------------
def _renderer():
    spec = importlib.util.spec_from_file_location("render_k8s", DEPLOY / "render_k8s.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return _renderer().render(K8S)


def _by_kind(objects, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def _containers(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            for c in _pod_spec(o)["containers"]:
                yield o, c


def _worker_deployments(objects) -> dict[str, dict]:
    """queue → its Deployment (the one whose worker command consumes exactly that queue)."""
    out = {}
    for name, dep in _by_kind(objects, "Deployment").items():
        cmd = _pod_spec(dep)["containers"][0]["command"]
        assert cmd[:2] == ["valueflow", "worker"], name
        queues = _option(cmd, "--queues").split(",")
        assert len(queues) == 1, f"{name}: one Deployment per queue, got {queues}"
        assert queues[0] not in out, f"queue {queues[0]} served by two Deployments"
        out[queues[0]] = dep
    return out


def _option(argv: list[str], name: str) -> str:
    i = argv.index(name)
    return argv[i + 1]


def check_valueflow_command(argv: list[str]) -> click.Command:
    """Parse ``argv`` with the real CLI (``scheduler.cli.main``) without running it.

    Walks the click groups to the leaf command and lets click parse and convert every option
    (unknown options, missing values, bad choices and ranges raise); ``--queues`` is checked
    against the queues the Celery app declares.
    """
    from scheduler.cli import main
    from workers.tasks.app import QUEUES as APP_QUEUES

    assert argv[0] == "valueflow", argv
    cmd, args, path = main, list(argv[1:]), ["valueflow"]
    ctx = click.Context(main, info_name="valueflow")
    while True:
        assert args and not args[0].startswith("-"), f"{shlex.join(argv)}: no subcommand after {' '.join(path)}"
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"{shlex.join(argv)}: {' '.join(path)} has no subcommand {args[0]!r}"
        path.append(args.pop(0))
        if not isinstance(sub, click.Group):
            break
        ctx, cmd = click.Context(sub, info_name=path[-1], parent=ctx), sub
    cmd = sub
    try:
        sub_ctx = cmd.make_context(path[-1], args, parent=ctx)
    except click.UsageError as exc:
        pytest.fail(f"{shlex.join(argv)}: {exc.format_message()}")
    queues = sub_ctx.params.get("queues")
    if path[1:] == ["worker"]:
        bad = [q for q in queues.split(",") if q not in APP_QUEUES]
        assert not bad, f"{shlex.join(argv)}: unknown queue(s) {bad}"
    return cmd


def _k8s_schema_registry(version: str) -> Registry:
    """kubernetes-validate's shared definitions (strict) for ``version``, for $refs from keda.json."""
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    folder = sorted((p for p in base.glob("v*-local-strict")
                     if tuple(map(int, p.name[1:].split("-")[0].split(".")[:2])) <= tuple(map(int, version.split(".")))),
                    key=lambda p: tuple(map(int, p.name[1:].split("-")[0].split("."))))[-1]
    defs = json.loads((folder / "_definitions.json").read_text())
    keda = json.loads((DEPLOY / "schemas" / "keda.json").read_text())
    return Registry().with_resources([(defs["$id"], Resource.from_contents(defs)),
                                      (keda["$id"], Resource.from_contents(keda))])


def validate_keda(obj: dict, version: str = K8S_VERSIONS[-1]) -> None:
    registry = _k8s_schema_registry(version)
    schema = {"$ref": f"https://valueflow.invalid/schemas/keda.json#/$defs/{obj['kind']}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blanks skipped); a malformed line fails."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}:{n}: not KEY=VALUE: {line!r}"
        out[key] = value
    return out


def _judges():
    from workers.judges.config import load_judges

    return load_judges(K8S / "judges.toml")


def _duration_s(text) -> int:
    """A compose duration (``1200s``, ``20m``, ``1h30m``) in seconds."""
    parts = re.findall(r"(\d+)(h|m|s)", str(text))
    assert parts and "".join(a + b for a, b in parts) == str(text), f"bad duration {text!r}"
    return sum(int(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


# -- the renderer ---------------------------------------------------------------------------------
def test_render_gives_every_object_namespaced_and_with_the_pinned_image(objects):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted([
        ("ConfigMap", "valueflow-config"), ("ConfigMap", "valueflow-judges"), ("Job", "valueflow-migrate"),
        *[("Deployment", f"valueflow-worker-{q}") for q in QUEUES],
        *[("ScaledObject", f"valueflow-worker-{q}") for q in QUEUES],
        ("TriggerAuthentication", "valueflow-redis"),
    ])
    assert {o["metadata"]["namespace"] for o in objects} == {"valueflow"}
    assert {c["image"] for _, c in _containers(objects)} == {"ghcr.io/example/valueflow:0.1.0"}
    judges_cm = _by_kind(objects, "ConfigMap")["valueflow-judges"]
    assert judges_cm["data"] == {"judges.toml": (K8S / "judges.toml").read_text()}


def test_renderer_refuses_kustomize_features_it_does_not_implement(tmp_path):
    r = _renderer()
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\npatches: [{path: p.yaml}]\n")
    with pytest.raises(r.KustomizeError, match=r"\['patches'\] not supported"):
        r.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [../outside.yaml]\n")
    with pytest.raises(r.KustomizeError, match="outside the kustomization folder"):
        r.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\nconfigMapGenerator: [{name: g, files: [cm.yaml]}]\n")
    with pytest.raises(r.KustomizeError, match="disableNameSuffixHash"):
        r.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nimages: [{name: a, newTag: 1}]\n")
    with pytest.raises(r.KustomizeError, match="newTag must be a string"):
        r.render(tmp_path)


def test_renderer_image_names_keep_registry_ports_and_drop_tags_and_digests():
    r = _renderer()
    assert r._image_name("valueflow") == "valueflow"
    assert r._image_name("valueflow:0.1.0") == "valueflow"
    assert r._image_name("reg.local:5000/team/valueflow:0.1.0@sha256:ab") == "reg.local:5000/team/valueflow"


# -- Kubernetes schemas -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_its_schema(objects, version):
    seen = 0
    for obj in objects:
        if obj["kind"] in KEDA_KINDS:
            validate_keda(obj, version)
        else:
            # strict: additionalProperties false everywhere, so a misspelt field fails too
            kubernetes_validate.validate(obj, version, strict=True)
        seen += 1
    assert seen == len(objects) == 12


def test_schemas_reject_broken_objects(objects):
    """The validation above is not vacuous: typical mistakes fail it."""
    dep = copy.deepcopy(_by_kind(objects, "Deployment")["valueflow-worker-api"])
    _pod_spec(dep)["terminationGracePeriod"] = 60                           # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)
    dep = copy.deepcopy(_by_kind(objects, "Deployment")["valueflow-worker-gpu"])
    _pod_spec(dep)["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"].pop("key")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)

    so = _by_kind(objects, "ScaledObject")["valueflow-worker-api"]
    mutations = [
        lambda s: s["spec"]["triggers"][0]["metadata"].update(listLength=4),       # CRD wants strings
        lambda s: s["spec"]["triggers"][0]["metadata"].pop("listName"),            # redis scaler needs it
        lambda s: s["spec"]["triggers"][0]["metadata"].update(listname="api"),     # unknown key
        lambda s: s["spec"].update(maxReplicas=3),                                 # not a ScaledObject field
        lambda s: s["spec"]["scaleTargetRef"].pop("name"),
        lambda s: s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].update(
            policies=[{"type": "Pods", "value": "1", "periodSeconds": 60}]),       # HPA schema: int
        lambda s: s["spec"]["triggers"][0]["authenticationRef"].update(kind="Secret"),
    ]
    for i, mutate in enumerate(mutations):
        bad = copy.deepcopy(so)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_keda(bad)
            pytest.fail(f"mutation {i} was accepted")
    ta = copy.deepcopy(_by_kind(objects, "TriggerAuthentication")["valueflow-redis"])
    ta["spec"]["secretTargetRef"][0].pop("key")
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(ta)


# -- what the issue asks of the Kubernetes tree ---------------------------------------------------------
def test_one_deployment_and_one_scaledobject_per_queue_on_its_redis_list(objects):
    deployments = _worker_deployments(objects)
    assert sorted(deployments) == sorted(QUEUES)
    scaled = _by_kind(objects, "ScaledObject")
    auths = _by_kind(objects, "TriggerAuthentication")
    for q, dep in deployments.items():
        assert "replicas" not in dep["spec"], f"{q}: KEDA owns the replica count"
        targets = [s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
        assert len(targets) == 1, f"{q}: {len(targets)} ScaledObjects"
        spec = targets[0]["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == q                          # Celery's list for queue q
        auth = auths[trigger["authenticationRef"]["name"]]
        params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
        assert {"address", "password"} <= params <= REDIS_AUTH_PARAMS
        assert "address" not in trigger["metadata"] and "host" not in trigger["metadata"]


def test_gpu_workers_request_a_gpu_and_tolerate_the_gpu_taint(objects):
    deployments = _worker_deployments(objects)
    gpu = _pod_spec(deployments["gpu"])
    res = gpu["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert _option(gpu["containers"][0]["command"], "--pool") == "solo"
    for q in ("api", "refit", "default"):
        spec = _pod_spec(deployments[q])
        assert "nvidia.com/gpu" not in json.dumps(spec["containers"][0]["resources"]), q
        assert "tolerations" not in spec, q


def test_grace_periods_cover_a_chunk_and_stay_under_the_visibility_timeout(objects):
    config = _by_kind(objects, "ConfigMap")["valueflow-config"]["data"]
    chunk = int(config["VALUEFLOW_CHUNK_SIZE"])
    visibility = int(config["VALUEFLOW_VISIBILITY_TIMEOUT"])
    grace = {q: _pod_spec(d)["terminationGracePeriodSeconds"] for q, d in _worker_deployments(objects).items()}
    # Redis must not hand a chunk to another worker while a stopping pod is still finishing it
    assert max(grace.values()) < visibility
    # an api chunk: ceil(chunk / concurrency) rounds of calls; each round may time out once and
    # succeed on its retry
    for judge in _judges().values():
        if judge.queue == "api":
            worst = math.ceil(chunk / judge.concurrency) * judge.timeout_s * 2
            assert grace["api"] >= worst, (judge.name, worst)
    # the migration Job gives up well before a worker would be cut short
    assert _by_kind(objects, "Job")["valueflow-migrate"]["spec"]["activeDeadlineSeconds"] <= visibility
    # compose stops its workers with the same grace (refit,default share one service there)
    services = _compose()["services"]
    assert _duration_s(services["worker-api"]["stop_grace_period"]) == grace["api"]
    assert _duration_s(services["worker-gpu"]["stop_grace_period"]) == grace["gpu"]
    assert _duration_s(services["worker-refit"]["stop_grace_period"]) == max(grace["refit"], grace["default"])


def test_secrets_come_only_from_secret_refs(objects):
    assert not _by_kind(objects, "Secret"), "Secrets are created out of band, never shipped"
    for o, c in _containers(objects):
        where = f"{o['metadata']['name']}/{c['name']}"
        names = {e["name"] for e in c.get("env", [])}
        assert {"VALUEFLOW_DATABASE_URL", "VALUEFLOW_BROKER_URL"} <= names, where
        for e in c.get("env", []):
            if SECRETISH.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{where}: {e['name']} not from a Secret"
            assert "@" not in str(e.get("value", "")), f"{where}: {e['name']} has credentials inline"
        for src in c.get("envFrom", []):
            assert "configMapRef" in src or "secretRef" in src
    for cm in _by_kind(objects, "ConfigMap").values():
        for key, value in cm["data"].items():
            assert not SECRETISH.search(key), f"{cm['metadata']['name']}: {key} belongs in a Secret"
            assert not re.search(r"://[^/\s]*:[^/\s]*@", value), f"{cm['metadata']['name']}: {key} holds credentials"
    # each API judge's key variable reaches the api workers from a Secret
    api_env = {e["name"]: e for e in _pod_spec(_worker_deployments(objects)["api"])["containers"][0]["env"]}
    api_judges = [j for j in _judges().values() if j.kind == "api"]
    assert api_judges, "judges.toml should show how an API judge's key is wired"
    for j in api_judges:
        assert "secretKeyRef" in api_env[j.api_key_env]["valueFrom"], j.name


def test_every_valueflow_container_mounts_the_judges_file_its_settings_name(objects):
    config = _by_kind(objects, "ConfigMap")["valueflow-config"]["data"]
    judges_path = Path(config["VALUEFLOW_JUDGES_FILE"])
    for o, c in _containers(objects):
        assert {"configMapRef": {"name": "valueflow-config"}} in c["envFrom"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volume = mounts.get(str(judges_path.parent))
        assert volume, f"{o['metadata']['name']}: nothing mounted at {judges_path.parent}"
        vol = next(v for v in _pod_spec(o)["volumes"] if v["name"] == volume)
        cm = _by_kind(objects, "ConfigMap")[vol["configMap"]["name"]]
        assert judges_path.name in cm["data"]
        assert mounts.get(config["VALUEFLOW_HOME"]), f"{o['metadata']['name']}: VALUEFLOW_HOME not writable"


def test_configmap_passes_the_real_settings_check(objects, monkeypatch, tmp_path):
    from schemas.settings import load_settings

    config = _by_kind(objects, "ConfigMap")["valueflow-config"]["data"]
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    judges = tmp_path / "judges.toml"
    judges.write_text(_by_kind(objects, "ConfigMap")["valueflow-judges"]["data"]["judges.toml"])
    monkeypatch.setenv("VALUEFLOW_JUDGES_FILE", str(judges))  # the mount point, here
    monkeypatch.setenv("VALUEFLOW_DATABASE_URL", "postgresql://u:p@db:5432/valueflow")
    monkeypatch.setenv("VALUEFLOW_BROKER_URL", "redis://:p@redis:6379/0")
    s = load_settings()
    assert (s.chunk_size, s.max_redeliveries, s.visibility_timeout) == (256, 5, 14400)
    assert str(s.home) == "/var/lib/valueflow"


def test_kubernetes_commands_are_real_valueflow_commands(objects):
    commands = [c["command"] for _, c in _containers(objects)]
    assert ["valueflow", "db", "upgrade"] in commands
    for argv in commands:
        check_valueflow_command(argv)
    for dep in _worker_deployments(objects).values():
        c = _pod_spec(dep)["containers"][0]
        port = int(_option(c["command"], "--metrics-port"))
        assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port]
        assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert _pod_spec(dep)["terminationGracePeriodSeconds"] >= 300
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)


def test_check_valueflow_command_catches_bad_commands():
    for argv, msg in [
        (["valueflow", "wroker"], "no subcommand 'wroker'"),
        (["valueflow", "db", "migrate"], "no subcommand 'migrate'"),
        (["valueflow", "worker", "--queue", "api"], "No such option"),
        (["valueflow", "worker", "--pool", "gevent"], "gevent"),
        (["valueflow", "worker", "--metrics-port", "70000"], "70000"),
        (["valueflow", "worker", "--queues", "cpu"], "unknown queue"),
    ]:
        with pytest.raises(BaseException, match=msg):
            check_valueflow_command(argv)


# -- compose ------------------------------------------------------------------------------------------
_INTERPOLATION = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?([^}]*)\}|[A-Za-z_][A-Za-z0-9_]*)")


def _interpolate(node, where="compose.yaml"):
    """Compose's ``$`` rules: ``$$`` is a literal ``$``; ``${VAR:-default}`` needs no .env; anything
    else would need a variable the stack does not define, so it fails."""
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(m):
        if m.group(1) == "$":
            return "$"
        assert m.group(3) in (":-", "-"), f"{where}: {m.group(0)} has no default"
        return m.group(4)

    return _INTERPOLATION.sub(sub, node)


def _compose() -> dict:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()))


def _long_running(svc: dict) -> bool:
    return svc.get("restart", "no") != "no"


def test_compose_parses_with_healthchecks_and_sound_dependencies():
    c = _compose()
    services = c["services"]
    assert {"postgres", "redis", "migrate", "worker-api", "worker-gpu", "worker-refit", "flower",
            "prometheus"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc, name
        cmd = svc.get("command", [])
        assert isinstance(cmd, list), f"{name}: exec-form command (a list), so SIGTERM reaches the process"
        if _long_running(svc):
            hc = svc.get("healthcheck")
            assert hc and hc["test"][0] in ("CMD", "CMD-SHELL") and len(hc["test"]) > 1, f"{name}: no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
            else:
                assert cond["condition"] == "service_completed_successfully"
                assert not _long_running(services[dep]), f"{name} waits for long-running {dep} to exit"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: mounts missing {src}"
            else:
                assert src in c["volumes"], f"{name}: undeclared volume {src}"
    for name in ("worker-api", "worker-gpu", "worker-refit"):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}
        assert deps["redis"] == {"condition": "service_healthy"}


def test_compose_commands_are_real_valueflow_commands():
    services = _compose()["services"]
    served = []
    for name, svc in services.items():
        cmd = svc.get("command", [])
        if cmd and cmd[0] == "valueflow":
            check_valueflow_command(cmd)
            if cmd[1] == "worker":
                served += _option(cmd, "--queues").split(",")
    assert services["migrate"]["command"] == ["valueflow", "db", "upgrade"]
    assert sorted(served) == sorted(QUEUES), "every queue has exactly one worker service"


def test_compose_reserves_a_gpu_for_the_gpu_worker_only():
    services = _compose()["services"]
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] >= 1
    assert _option(services["worker-gpu"]["command"], "--queues") == "gpu"
    others = [n for n, s in services.items() if n != "worker-gpu" and "devices" in json.dumps(s.get("deploy", {}))]
    assert not others


def test_compose_secrets_come_from_env_files_whose_examples_fit_together(monkeypatch):
    services = _compose()["services"]
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            assert not SECRETISH.search(key), f"{name}: {key} belongs in an env file"
            assert "@" not in str(value), f"{name}: {key} has credentials inline"
        for f in svc.get("env_file", []):
            assert (DEPLOY / f"{f}.example").is_file(), f"{name}: no example for {f}"
    assert "/env/*.env" in (DEPLOY / ".gitignore").read_text().split()
    env = {p.name.removesuffix(".env.example"): _env_file(p) for p in (DEPLOY / "env").glob("*.env.example")}
    vf, pg, redis = env["valueflow"], env["postgres"], env["redis"]
    db = urlsplit(vf["VALUEFLOW_DATABASE_URL"])
    assert (db.hostname, db.port, db.username, db.password, db.path) == (
        "postgres", 5432, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], "/" + pg["POSTGRES_DB"])
    broker = urlsplit(vf["VALUEFLOW_BROKER_URL"])
    assert (broker.hostname, broker.port, broker.password) == ("redis", 6379, redis["REDISCLI_AUTH"])
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["command"])        # the server takes that password
    for j in _judges().values():
        if j.api_key_env:
            assert j.api_key_env in vf, f"judge {j.name}: {j.api_key_env} missing from valueflow.env.example"
    from schemas.settings import load_settings

    for key in ("VALUEFLOW_DATABASE_URL", "VALUEFLOW_BROKER_URL"):
        monkeypatch.setenv(key, vf[key])
    monkeypatch.delenv("VALUEFLOW_JUDGES_FILE", raising=False)
    assert load_settings().broker_url == vf["VALUEFLOW_BROKER_URL"]


def test_compose_metrics_are_scraped_where_workers_serve_them():
    services = _compose()["services"]
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    workers = {n: s for n, s in services.items() if s.get("command", [None])[:2] == ["valueflow", "worker"]}
    assert sorted(sd["names"]) == sorted(workers)
    for name, svc in workers.items():
        port = int(_option(svc["command"], "--metrics-port"))
        assert port == sd["port"], name
        assert f"127.0.0.1:{port}/metrics" in " ".join(svc["healthcheck"]["test"]), name
        assert "VALUEFLOW_TORCH_THREADS" in svc["environment"] or name == "worker-api"
    assert services["prometheus"]["volumes"][0].startswith("./prometheus.yml:")


def test_flower_runs_the_real_celery_app():
    import celery
    from celery.bin.celery import celery as celery_cli

    flower = _compose()["services"]["flower"]
    cmd = flower["command"]
    assert cmd[0] == "celery" and "flower" in cmd
    assert cmd[1] in {o for p in celery_cli.params for o in p.opts}
    module, _, attr = cmd[2].partition(":")
    assert isinstance(getattr(importlib.import_module(module), attr), celery.Celery)
    assert re.search(r"pip install [^\n]*\"flower[>=<]", (DEPLOY / "Dockerfile").read_text())
    assert "env/flower.env" in flower["env_file"]

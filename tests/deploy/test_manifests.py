"""Every deployment manifest under deploy/ is valid and says what the code does, checked offline.

- Kubernetes: each kustomization renders (kubectl's kustomize) and every object validates against the
  Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields fail); probes hit real routes, model
  pods serve real service classes, the gateway's URLs reach real Services, GPUs where the overlay says.
- Compose: the files parse, validate against the Compose schema (when `make deploy-tools` fetched it), and
  keep the seed's production rules (restart, healthcheck with a start period, limits, log rotation,
  read-only models, secrets only from env files).
- BentoCloud config structures into BentoML's own deployment schema; the systemd unit passes
  `systemd-analyze verify` and `security`; every PromQL expression names metrics the suite exports.
- Every QWEN_* variable anywhere in deploy/ is a real setting; no secret value is committed.
Tools missing here skip their part with the reason (`make deploy-tools` installs them).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import AliasChoices

from services.runtime.core import settings as S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".venv" / "deploy-tools"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/cuda", "overlays/t4-shared", "cluster"]
OVERLAYS = ["overlays/cpu", "overlays/cuda", "overlays/t4-shared"]
K8S_VERSIONS = ["1.30", "1.37"]  # oldest cluster we claim to support, newest schema shipped
PROBE_ROUTES = {"/livez", "/readyz", "/health"}
SERVICE_CLASSES = {"aligner": "Aligner", "asr": "ASR", "tts": "TTS", "captioner": "Captioner",
                   "diagram": "Diagram", "vl": "VL"}
GATEWAY = "services.gateway:Gateway"
SECRETISH = re.compile(r"(API_KEY|SECRET|TOKEN|PASSWORD|ACCESS_KEY)")


# --------------------------------------------------------------------------------------------- helpers


def setting_names() -> set[str]:
    """Every environment name the settings accept: prefix + field, and every documented alias."""
    names: set[str] = set()

    def add(cls, prefix: str) -> None:
        for fname, field in cls.model_fields.items():
            if fname in S.SERVICE_KEYS:
                continue  # nested service settings: their own prefix
            names.add((prefix + fname).upper())
            if isinstance(field.validation_alias, AliasChoices):
                names.update(c for c in field.validation_alias.choices if isinstance(c, str))

    add(S.Settings, S.Settings.model_config["env_prefix"])
    for key in S.SERVICE_KEYS:
        cls = S.Settings.model_fields[key].default_factory
        add(cls, cls.model_config["env_prefix"])
    return names


def secret_setting_names() -> set[str]:
    """Settings that hold secrets: SecretStr fields (all their names) and credential-named ones."""
    out: set[str] = set()
    for fname, field in S.Settings.model_fields.items():
        if fname in S.SERVICE_KEYS:
            continue
        choices = (field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices)
                   else [f"QWEN_{fname.upper()}"])
        if "SecretStr" in str(field.annotation) or SECRETISH.search(choices[0]):
            out.add(choices[0])
    assert "QWEN_API_KEY" in out and "QWEN_S3_SECRET_ACCESS_KEY" in out, out
    return out


SETTINGS = setting_names()
SECRET_SETTINGS = secret_setting_names()


def qwen_tokens(text: str) -> set[str]:
    """Complete QWEN_* names in a text (a name cut by a template, e.g. QWEN_<SVC>_URL, is no name)."""
    return {m.group(0) for m in re.finditer(r"QWEN_[A-Z0-9_]*[A-Z0-9]\b(?![<{*])", text)}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def kustomize_cmd() -> list[str] | None:
    if os.environ.get("KUSTOMIZE"):
        return [os.environ["KUSTOMIZE"], "build"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    for kubectl in (shutil.which("kubectl"), str(TOOLS / "bin" / "kubectl")):
        if kubectl and Path(kubectl).exists():
            return [kubectl, "kustomize"]
    return None


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file; commented-out assignments too (placeholders), marked with '#'."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[("#" if m.group(1) else "") + m.group(2)] = m.group(3).strip()
    return out


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ is a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            return val if (val if op == ":-" else val is not None) else arg
        if op in (":?", "?"):
            if not val if op == ":?" else val is None:
                raise ValueError(f"${{{name}}} required: {arg}")
            return val
        return val or ""

    pattern = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
    return re.sub(pattern, one, value.replace("$$", "\0")).replace("\0", "$")


def deep_merge(base, over):
    """Compose's override merge for what these files use: mappings merge, everything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return over


def service_class_exists(key: str, cls: str) -> bool:
    tree = ast.parse((ROOT / "services" / key / "service.py").read_text())
    return any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body)


def bento_service_names() -> dict[str, str]:
    """Service key -> the name in its @bentoml.service(name=...)."""
    out = {}
    for key in S.SERVICE_KEYS:
        m = re.search(r'@bentoml\.service\(\s*name="([^"]+)"', (ROOT / "services" / key / "service.py").read_text())
        out[key] = m.group(1)
    return out


def served_target(args: list[str]) -> str | None:
    """`bentoml serve <target>` in a container's args/command."""
    for i, a in enumerate(args[:-1]):
        if a == "serve" and i > 0 and args[i - 1].endswith("bentoml"):
            return args[i + 1]
    return None


def check_served_target(target: str) -> str:
    """The service key a `bentoml serve` target runs (gateway for the entry service); fails if not real."""
    if target == GATEWAY:
        return "gateway"
    m = re.fullmatch(r"services\.(\w+)\.service:(\w+)", target)
    assert m, f"not a model service target: {target}"
    key, cls = m.groups()
    assert SERVICE_CLASSES.get(key) == cls and service_class_exists(key, cls), target
    return key


def quantity_ok(v) -> bool:
    return bool(re.fullmatch(r"\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?", str(v)))


def cpu_cores(v) -> float:
    s = str(v)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def gib(v) -> float:
    s = str(v)
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 1024, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s) / 2**30


# -------------------------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each kustomization rendered, from a copy of deploy/kubernetes with secrets.env made from the example."""
    cmd = kustomize_cmd()
    if cmd is None:
        pytest.skip("kustomize not found (kubectl with built-in kustomize, or kustomize): run `make deploy-tools`")
    tree = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, tree)
    example = (tree / "base/secrets.env.example").read_text()
    (tree / "base/secrets.env").write_text(example.replace("QWEN_API_KEY=\n", "QWEN_API_KEY=placeholder-for-tests\n"))
    out = {}
    for name in KUSTOMIZATIONS:
        res = subprocess.run([*cmd, str(tree / name)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{name}: {res.stderr}"
        out[name] = [d for d in yaml.safe_load_all(res.stdout) if d]
    return out


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def configmap(docs: list[dict], prefix: str) -> dict[str, str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    return cm["data"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_validates_against_kubernetes_schemas(rendered, name):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed: `make deploy-tools`")
    docs = rendered[name]
    assert docs
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} @ {path}: {e.message} (k8s {version})")
        # The schemas accept any string as a quantity: check the resource quantities ourselves.
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) + \
                doc.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers", []):
            for section in ("requests", "limits"):
                for res, q in c.get("resources", {}).get(section, {}).items():
                    assert quantity_ok(q), f"{name}: {doc['metadata']['name']}/{c['name']} {section}.{res}={q!r}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_is_one_deployment_service_and_hpa_per_service(rendered, name):
    docs = rendered[name]
    deps, svcs, hpas = objects(docs, "Deployment"), objects(docs, "Service"), objects(docs, "HorizontalPodAutoscaler")
    enabled = configmap(docs, "qwen-settings").get("QWEN_SERVICES", ",".join(S.SERVICE_KEYS)).split(",")
    assert set(deps) == {"gateway", *enabled}, f"{name}: Deployments {sorted(deps)} vs QWEN_SERVICES {enabled}"
    assert set(svcs) == set(deps) and set(hpas) == set(deps)
    images = set()
    for dname, dep in deps.items():
        hpa = hpas[dname]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dname}
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        assert "replicas" not in dep["spec"], f"{dname}: the HPA owns replicas"
        sel = dep["spec"]["selector"]["matchLabels"]
        assert svcs[dname]["spec"]["selector"] == sel
        assert all(dep["spec"]["template"]["metadata"]["labels"][k] == v for k, v in sel.items())
        spec = dep["spec"]["template"]["spec"]
        images |= {c["image"] for c in spec["containers"] + spec.get("initContainers", [])}
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container(dep)["securityContext"]["allowPrivilegeEscalation"] is False
    # One image for every pod, named by the overlay (the base's `qwen-bento` is a placeholder).
    assert len(images) == 1 and images.pop().startswith(("qwen-bento-cpu:", "qwen-bento-cuda:")), images


@pytest.mark.parametrize("name", OVERLAYS)
def test_pods_serve_real_services_and_probe_real_routes(rendered, name):
    gateway_src = (ROOT / "services/gateway/routes.py").read_text()
    assert '@router.get("/health"' in gateway_src  # /livez and /readyz are BentoML's own, on every service
    for dname, dep in objects(rendered[name], "Deployment").items():
        c = container(dep)
        key = check_served_target(served_target(c["args"]))
        assert key == dname
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert "--port" in c["args"] and int(c["args"][c["args"].index("--port") + 1]) == ports["http"]
        probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        for kind, get in probes.items():
            assert get["path"] in PROBE_ROUTES and get["port"] == "http", f"{dname} {kind}: {get}"
        assert probes["livenessProbe"]["path"] == "/livez"
        if key == "gateway":
            # Readiness must not follow every model (one model's outage would empty the load balancer).
            assert probes["readinessProbe"]["path"] == "/livez"
        else:
            # /health is the gateway's; a model service is ready when its model is (BentoML's /readyz).
            assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
            budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
            assert budget >= 600, f"{dname}: {budget} s to load a model"
            if key == "captioner":
                assert budget > S.CaptionerSettings().vllm_start_timeout, "startup budget < vLLM's own timeout"


@pytest.mark.parametrize("name", OVERLAYS)
def test_gateway_reaches_each_model_service_by_url(rendered, name):
    docs = rendered[name]
    deps, svcs = objects(docs, "Deployment"), objects(docs, "Service")
    env = env_of(container(deps["gateway"]))
    enabled = configmap(docs, "qwen-settings").get("QWEN_SERVICES", ",".join(S.SERVICE_KEYS)).split(",")
    for key in enabled:
        url = env[f"QWEN_{key.upper()}_URL"]
        m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
        assert m, url
        host, port = m.group(1), int(m.group(2))
        assert host in svcs and any(p["port"] == port for p in svcs[host]["spec"]["ports"]), url
        assert svcs[host]["spec"]["selector"]["app.kubernetes.io/component"] == key
    # Ingress -> gateway Service; model pods reachable only from the gateway (NetworkPolicy).
    (ing,) = objects(docs, "Ingress").values()
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "gateway"
    assert backend["port"]["name"] in {p["name"] for p in svcs["gateway"]["spec"]["ports"]}
    ann = ing["metadata"]["annotations"]
    assert ann["alb.ingress.kubernetes.io/group.name"]
    assert ann["alb.ingress.kubernetes.io/healthcheck-path"] in PROBE_ROUTES
    (netpol,) = objects(docs, "NetworkPolicy").values()
    peer = netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert peer["app.kubernetes.io/component"] == "gateway"


@pytest.mark.parametrize("name", OVERLAYS)
def test_models_read_only_from_the_cache_and_secrets_only_in_the_gateway(rendered, name):
    docs = rendered[name]
    settings_cm = configmap(docs, "qwen-settings")
    assert settings_cm["HF_HUB_OFFLINE"] == "1" and settings_cm["QWEN_MODEL_CACHE"].startswith("/models/")
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    for dname, dep in objects(docs, "Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        c = container(dep)
        refs = [e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])]
        if dname == "gateway":
            assert secret["metadata"]["name"] in refs
            continue
        assert secret["metadata"]["name"] not in refs, f"{dname} gets the secrets"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["models"]["readOnly"] is True
        (init,) = spec["initContainers"]
        assert init["command"][-1] == dname and "fetch_models.py" in init["command"][1]
        pvc = {v["name"]: v for v in spec["volumes"]}["models"]["persistentVolumeClaim"]["claimName"]
        assert pvc in objects(docs, "PersistentVolumeClaim")


def test_gpu_placement_per_overlay(rendered):
    def gpus(dep) -> int:
        return int(container(dep)["resources"].get("limits", {}).get("nvidia.com/gpu", 0))

    cpu = rendered["overlays/cpu"]
    assert configmap(cpu, "qwen-settings")["QWEN_DEVICE"] == "cpu"
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    for name in ("overlays/cuda", "overlays/t4-shared"):
        docs = rendered[name]
        deps = objects(docs, "Deployment")
        assert configmap(docs, "qwen-settings")["QWEN_DEVICE"] == "cuda"
        assert gpus(deps["gateway"]) == 0
        for key in S.SERVICE_KEYS:
            assert gpus(deps[key]) == (2 if key == "captioner" else 1), key
        cap = deps["captioner"]
        assert env_of(container(cap))["QWEN_CAPTIONER_VLLM_TENSOR_PARALLEL_SIZE"] == "2"
        shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
        assert shm in cap["spec"]["template"]["spec"]["volumes"]
        for key in ("asr", "tts"):
            assert env_of(container(deps[key]))[f"QWEN_{key.upper()}_GPU_MEMORY_FRACTION"] == "0.45"
    # The seed's T4: ASR + TTS on one time-sliced g4dn.xlarge (~3.9 CPU / ~14.7 GiB allocatable).
    deps = objects(rendered["overlays/t4-shared"], "Deployment")
    pair = [deps["asr"], deps["tts"]]
    assert all(d["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "Tesla-T4" for d in pair)
    assert sum(cpu_cores(container(d)["resources"]["requests"]["cpu"]) for d in pair) <= 3.5
    assert sum(gib(container(d)["resources"]["limits"]["memory"]) for d in pair) <= 14.7
    # Time-slicing: one T4 advertised as two GPUs, for the nodes labelled with that config.
    (cm,) = [d for d in rendered["cluster"] if d["kind"] == "ConfigMap"]
    ts = yaml.safe_load(cm["data"]["t4-time-sliced"])["sharing"]["timeSlicing"]
    assert ts["resources"] == [{"name": "nvidia.com/gpu", "replicas": 2}]


def test_queue_depth_hpas_use_the_exported_metric(rendered):
    adapter = yaml.safe_load((DEPLOY / "prometheus/prometheus-adapter-rules.yaml").read_text())
    exposed = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    families = metric_families()
    for hpa in objects(rendered["overlays/cuda"], "HorizontalPodAutoscaler").values():
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                assert m["pods"]["metric"]["name"] in exposed
    for r in adapter["rules"]["custom"]:
        assert metric_names_in(r["seriesQuery"]) <= families


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_env_names_are_settings(rendered, name):
    for doc in rendered[name]:
        names = set()
        if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"].startswith("qwen-"):
            names |= set(doc.get("data", {}))
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) + \
                doc.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers", []):
            names |= {e["name"] for e in c.get("env", [])}
        unknown = {n for n in names if n.startswith("QWEN_")} - SETTINGS
        assert not unknown, f"{name}: {doc['kind']}/{doc['metadata']['name']}: not settings: {unknown}"


def test_real_secrets_file_is_not_committed():
    ignored = (K8S / ".gitignore").read_text().split()
    assert "base/secrets.env" in ignored and ".env" in (COMPOSE / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [p for p in tracked if p.endswith(("secrets.env", "/.env"))], tracked


# ----------------------------------------------------------------------------------------------- Compose

COMPOSE_FILES = ["bento.yml", "bento.gpu.yml", "services.yml", "services.gpu.yml"]
COMPOSE_ENV = {"QWEN_API_KEY": "placeholder-for-tests", "REDIS_PASSWORD": "placeholder-for-tests"}


def compose(*files: str) -> dict:
    merged: dict = {}
    for f in files:
        merged = deep_merge(merged, yaml.safe_load((COMPOSE / f).read_text()))
    return interpolate(merged, COMPOSE_ENV)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_validates_against_the_compose_schema(name):
    schema_file = TOOLS / "compose_spec.json"
    if not schema_file.exists():
        pytest.skip(f"{schema_file} missing: `make deploy-tools` fetches the Compose schema")
    import jsonschema

    doc = yaml.safe_load((COMPOSE / name).read_text())
    errors = list(jsonschema.Draft7Validator(json.loads(schema_file.read_text())).iter_errors(doc))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_required_secret_is_enforced():
    with pytest.raises(ValueError, match="QWEN_API_KEY"):
        interpolate(yaml.safe_load((COMPOSE / "services.yml").read_text()), {})


@pytest.mark.parametrize("files", [("bento.yml",), ("bento.yml", "bento.gpu.yml"), ("services.yml",),
                                   ("services.yml", "services.gpu.yml")], ids=lambda f: "+".join(f))
def test_compose_production_rules(files):
    doc = compose(*files)
    services = {k: v for k, v in doc["services"].items() if "setup" not in v.get("profiles", [])}
    assert services
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped", name
        assert svc["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}, name
        limits = svc["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[MG]", str(limits["memory"])), (name, limits)
        if name == "redis":
            check_compose_redis(doc, svc)
            continue
        hc = svc["healthcheck"]
        probe = " ".join(hc["test"])
        assert hc["test"][0] == "CMD" and re.search(r"http://127\.0\.0\.1:3000(/health|/readyz)'", probe), probe
        assert int(hc["start_period"].rstrip("s")) >= 180, name  # the seed's start period, at least
        for f in svc.get("env_file", []):
            assert (COMPOSE / f).exists() or (COMPOSE / f"{f}.example").exists(), f
        env = svc.get("environment", {})
        assert isinstance(env, dict)
        unknown = {k for k in env if k.startswith("QWEN_")} - SETTINGS
        assert not unknown, (name, unknown)
        target = served_target(svc.get("command", []))
        if target is None:  # the whole Bento: the image's entrypoint serves the entry service
            assert name == "qwen-bento" and "command" not in svc
            assert "/health" in probe
            continue
        key = check_served_target(target)
        if key == "gateway":
            assert "/health" in probe and svc["ports"] == ["3000:3000"]
            for k in SERVICE_CLASSES:
                url = env[f"QWEN_{k.upper()}_URL"]
                assert url == f"http://{k}:3000" and k in services and "models" in services[k]["networks"], url
        else:
            assert key == name and "/readyz" in probe and "ports" not in svc
            assert all(v.endswith(":ro") for v in svc["volumes"]), svc["volumes"]
            assert svc["networks"] == ["models"] and ".env" not in svc["env_file"], name
    if "services.yml" in files:
        assert doc["networks"]["models"]["internal"] is True
    if any(f.endswith(".gpu.yml") for f in files):
        assert all(s["image"].startswith("qwen-bento-cuda:") for k, s in doc["services"].items() if k != "redis")
    else:
        assert all(s["image"].startswith("qwen-bento-cpu:") for k, s in doc["services"].items() if k != "redis")


def check_compose_redis(doc: dict, svc: dict) -> None:
    """The gateways' shared state: persistence on, a memory cap and policy, a password, no published port,
    reached only from the gateway (the internal `state` network), and the gateway pointed at it."""
    command = " ".join(svc["command"])
    assert "--appendonly yes" in command and "--maxmemory " in command and "--maxmemory-policy volatile-ttl" in command
    assert '--requirepass "$REDIS_PASSWORD"' in command or '--requirepass "$$REDIS_PASSWORD"' in command
    assert "ports" not in svc and svc["networks"] == ["state"] and doc["networks"]["state"]["internal"] is True
    assert svc["cap_drop"] == ["ALL"] and "redis-data:/data" in svc["volumes"] and "redis-data" in doc["volumes"]
    assert "ping" in " ".join(svc["healthcheck"]["test"])
    gateway = doc["services"]["gateway"]
    assert "state" in gateway["networks"]
    assert re.fullmatch(r"redis://:[^@]+@redis:6379/0", gateway["environment"]["QWEN_STATE_URL"])


def test_compose_gpu_layout_fits():
    doc = compose("services.yml", "services.gpu.yml")
    share: dict[str, float] = {}
    for name in SERVICE_CLASSES:
        svc = doc["services"][name]
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
        env = svc["environment"]
        assert env[f"QWEN_{name.upper()}_DEVICE"] == "cuda"
        if name == "captioner":
            assert len(dev["device_ids"]) == int(env["QWEN_CAPTIONER_VLLM_TENSOR_PARALLEL_SIZE"]) == 2
            assert svc["shm_size"]
            continue
        (gpu,) = dev["device_ids"]
        share[gpu] = share.get(gpu, 0) + float(env[f"QWEN_{name.upper()}_GPU_MEMORY_FRACTION"])
    assert all(v <= 0.95 for v in share.values()), share
    assert share[doc["services"]["asr"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]] == 0.9
    # The one-container GPU file places the same services the same way (fractions per cuda:N).
    bento = compose("bento.yml", "bento.gpu.yml")["services"]["qwen-bento"]["environment"]
    per_dev: dict[str, float] = {}
    for key in SERVICE_CLASSES:
        if key != "captioner":
            per_dev[bento[f"QWEN_{key.upper()}_DEVICE"]] = per_dev.get(bento[f"QWEN_{key.upper()}_DEVICE"], 0) + \
                float(bento[f"QWEN_{key.upper()}_GPU_MEMORY_FRACTION"])
    assert sorted(per_dev.values()) == sorted(share.values())


# ------------------------------------------------------------------------------- env examples and secrets

ENV_EXAMPLES = [COMPOSE / ".env.example", K8S / "base/secrets.env.example", DEPLOY / "systemd/qwen-bento.env.example"]


@pytest.mark.parametrize("path", ENV_EXAMPLES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_env_examples_name_every_secret_with_placeholders_only(path):
    entries = parse_env_file(path)
    names = {k.lstrip("#") for k in entries}
    assert SECRET_SETTINGS <= names, f"missing: {SECRET_SETTINGS - names}"
    assert "QWEN_API_KEY" in entries, "QWEN_API_KEY must be an active (uncommented) line to fill in"
    for k, v in entries.items():
        if SECRETISH.search(k):
            assert v == "", f"{k} has a value in an example file"
    unknown = {k.lstrip("#") for k in entries if k.lstrip("#").startswith("QWEN_")} - SETTINGS
    assert not unknown, unknown


def test_committed_env_files_hold_no_secrets():
    for path in (COMPOSE / "settings.env", K8S / "base/settings.env"):
        entries = parse_env_file(path)
        assert not [k for k in entries if SECRETISH.search(k)], path
        assert not ({k.lstrip("#") for k in entries if k.lstrip("#").startswith("QWEN_")} - SETTINGS), path


def test_no_secret_values_anywhere_in_deploy():
    patterns = [
        re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
        re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face token
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        # NAME=value / NAME: value for a secret-looking name, unless empty, a ${...} reference, a <placeholder>
        # or an obvious test/example word.
        re.compile(r"(?<![{\w])[A-Z0-9_]*(?:API_KEY|SECRET_ACCESS_KEY|PASSWORD|_TOKEN)\b[\"']?\s*[:=]\s*(?!\$\{|<|\s|$|\"\"|''|"
                   r"placeholder|example|change-?me)[^\s#]+", re.M),
    ]
    found = []
    for p in deploy_files():
        text = p.read_text(errors="replace")
        for pat in patterns:
            found += [f"{p.relative_to(ROOT)}: {m.group(0)}" for m in pat.finditer(text)]
    assert not found, found


def test_every_qwen_name_in_deploy_is_a_setting():
    bad = {}
    for p in deploy_files():
        unknown = qwen_tokens(p.read_text(errors="replace")) - SETTINGS
        if unknown:
            bad[str(p.relative_to(ROOT))] = sorted(unknown)
    assert not bad, bad


# ---------------------------------------------------------------------------------------------- BentoCloud


def test_bentocloud_config_structures_into_bentomls_schema():
    from bentoml._internal.cloud.deployment import DeploymentAPI
    from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
    from bentoml._internal.utils.cattr import bentoml_cattr

    raw = yaml.safe_load((DEPLOY / "bentocloud/deployment.yaml").read_text())
    known = {"name", "bento", "access_authorization", "secrets", "envs", "services", "labels", "cluster"}
    assert set(raw) <= known, set(raw) - known
    cfg = bentoml_cattr.structure(raw, CreateDeploymentSchema)
    DeploymentAPI._fix_and_validate_schema(cfg)  # min <= max, max > 0
    names = bento_service_names()
    assert set(cfg.services) == {"qwen-bento", *names.values()}
    svc_fields = {"instance_type", "scaling", "envs", "deployment_strategy", "extras", "cold_start_timeout",
                  "config_overrides"}
    for key, svc in raw["services"].items():
        assert set(svc) <= svc_fields, (key, set(svc) - svc_fields)
        assert svc["instance_type"] and svc["scaling"]["min_replicas"] >= 1
    gpu = {k for k, v in raw["services"].items() if v["instance_type"].startswith("gpu.")}
    assert gpu == set(names.values())
    assert raw["services"]["captioner"]["instance_type"].endswith(".2")
    assert cfg.secrets == ["qwen-bento"]
    envs = [e for e in raw.get("envs", [])] + [e for s in raw["services"].values() for e in s.get("envs", [])]
    assert not {e["name"] for e in envs if e["name"].startswith("QWEN_")} - SETTINGS
    assert not [e for e in envs if SECRETISH.search(e["name"])], "secrets belong in the BentoCloud secret"
    assert raw["bento"].startswith("qwen-bento-cuda")


# ------------------------------------------------------------------------------------------------- systemd

UNIT = DEPLOY / "systemd/qwen-bento.service"


def unit_entries() -> list[tuple[str, str, str]]:
    section, out = "", []
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.append((section, k, v))
    return out


def test_systemd_unit_runs_the_bento_from_the_venv_hardened():
    e = {(s, k): v for s, k, v in unit_entries()}
    exec_start = e[("Service", "ExecStart")].split()
    assert exec_start[0].endswith("/.venv/bin/bentoml") and served_target(exec_start) == GATEWAY
    assert e[("Service", "Restart")] == "on-failure" and e[("Service", "EnvironmentFile")].startswith("/etc/")
    assert e[("Service", "StandardOutput")] == e[("Service", "StandardError")] == "journal"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes"}.items():
        assert e[("Service", key)] == value, key
    # The model cache must stay writable under ProtectSystem=strict: it lives in the StateDirectory.
    state = "/var/lib/" + e[("Service", "StateDirectory")]
    envs = dict(v.split("=", 1) for s, k, v in unit_entries() if k == "Environment")
    assert envs["QWEN_MODEL_CACHE"].startswith(state) and envs["HF_HOME"].startswith(state)
    assert not set(filter(lambda n: n.startswith("QWEN_"), envs)) - SETTINGS
    assert not [n for n in envs if SECRETISH.search(n)], "secrets belong in the EnvironmentFile"


def test_systemd_analyze_verify_and_security(tmp_path):
    sa = shutil.which("systemd-analyze")
    if sa is None:
        pytest.skip("systemd-analyze not installed")
    exec_path = next(v for s, k, v in unit_entries() if k == "ExecStart").split()[0]
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(exec_path, "/bin/true"))  # verify wants the binary to exist
    res = subprocess.run([sa, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stdout + res.stderr
    # The exposure deploy/README.md states (1.8, on systemd's 0-10 scale; --threshold is x10): more fails.
    res = subprocess.run([sa, "security", "--offline=yes", "--threshold=18", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout[-800:] + res.stderr[-800:]


# --------------------------------------------------------------------------------- Prometheus and Grafana

PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "abs", "absent",
    "clamp_min", "clamp_max", "max_over_time", "min_over_time", "avg_over_time", "delta", "deriv", "topk",
    "bottomk", "label_replace", "time", "vector", "scalar", "round", "sort", "sort_desc", "quantile",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan"}


def metric_families() -> set[str]:
    """Series names the suite exports (services/runtime/core/metrics.py), with the client's suffixes."""
    src = (ROOT / "services/runtime/core/metrics.py").read_text()
    out = set()
    for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"([a-z_:]+)"', src):
        out |= {"Counter": {f"{name}_total"}, "Gauge": {name},
                "Histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"}}[kind]
    assert len(out) > 10
    return out


def metric_names_in(expr: str) -> set[str]:
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    s = re.sub(r"\$\w+", "", s)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        tok, call = m.group(1), m.group(2)
        if call:
            assert tok in PROMQL_FUNCTIONS, f"unknown PromQL function {tok} in {expr}"
        elif tok.lower() not in PROMQL_KEYWORDS and not re.fullmatch(r"\d.*", tok):
            names.add(tok)
    return names


def check_expr(expr: str, families: set[str]) -> None:
    for name in metric_names_in(expr):
        assert name in families or name.startswith(("vllm:", "bentoml_")) or name == "up", \
            f"{name} is not a metric the suite exports (in {expr!r})"


def dashboard_exprs(dash: dict) -> list[str]:
    out = []
    for panel in dash["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
        for sub in panel.get("panels", []):
            out += [t["expr"] for t in sub.get("targets", [])]
    return out


def test_grafana_dashboard_queries_only_exported_metrics():
    dash = json.loads((DEPLOY / "grafana/qwen-bento.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    families = metric_families()
    exprs = dashboard_exprs(dash)
    assert exprs
    for expr in exprs:
        check_expr(expr, families)
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
            assert m and m.group(1) in families, q
    # Every family the suite exports has a panel, and the vLLM subprocess's series too.
    used = set().union(*(metric_names_in(e) for e in exprs))
    base = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in families}
    assert base <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}, base - used
    assert any(n.startswith("vllm:") for n in used)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_config_and_alert_rules():
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    for f in prom["rule_files"]:
        assert (DEPLOY / "prometheus" / f).exists(), f
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    static = jobs["qwen-bento"]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in static} == {"gateway", *SERVICE_CLASSES}
    compose_names = set(yaml.safe_load((COMPOSE / "services.yml").read_text())["services"])
    assert {t.split(":")[0] for t in static} <= compose_names
    for job in jobs.values():
        for rc in job.get("relabel_configs", []):
            assert rc.get("target_label") != "service", "would clash with the qwen_* `service` label"
    families = metric_families()
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for r in alerts.values():
        check_expr(r["expr"], families)
        assert r["labels"]["severity"] and r["annotations"]["summary"]
    assert {"QwenModelNotReady", "QwenHigh5xxRate", "QwenQueueSaturated"} <= set(alerts)
    # The reasons the alerts filter on are the ones the scheduler records.
    scheduler = (ROOT / "services/runtime/serving/scheduler.py").read_text()
    reasons = set(re.findall(r'rejected\.labels\([^,]+,\s*"(\w+)"\)', scheduler))
    for r in alerts.values():
        assert set(re.findall(r'reason="(\w+)"', r["expr"])) <= reasons


# ------------------------------------------------------------------------------------------ fetch_models


def run_fetch(args: list[str], env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN_", "HF_"))}
    return subprocess.run([sys.executable, str(K8S / "base/fetch_models.py"), *args], cwd=ROOT,
                          env={**base, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True, timeout=120)


def test_fetch_models_skips_local_folders_and_refuses_unknown_services(tmp_path):
    res = run_fetch(["aligner"], {"QWEN_ALIGNER_MODEL": str(tmp_path)})
    assert res.returncode == 0 and "local folder" in res.stdout, res.stdout + res.stderr
    res = run_fetch(["nope"], {})
    assert res.returncode == 2 and "unknown service" in res.stderr
    res = run_fetch([], {"QWEN_MODELS": "tiny"})
    assert res.returncode == 0 and "tiny" in res.stdout
    res = run_fetch(["vl"], {"QWEN_VL_MODEL": "/does/not/exist"})
    assert res.returncode == 1 and "does not exist" in res.stderr
    # The aligner's vocal separator is fetched with it (here: a local folder, so nothing to fetch; a path that
    # does not exist is refused, naming it).
    res = run_fetch(["aligner"], {"QWEN_ALIGNER_MODEL": str(tmp_path), "QWEN_ALIGNER_SEPARATOR": str(tmp_path)})
    assert res.returncode == 0 and res.stdout.count("local folder") == 2 and "aligner separator" in res.stdout
    res = run_fetch(["aligner"], {"QWEN_ALIGNER_MODEL": str(tmp_path), "QWEN_ALIGNER_SEPARATOR": "/no/demucs"})
    assert res.returncode == 1 and "aligner separator: model path '/no/demucs'" in res.stderr

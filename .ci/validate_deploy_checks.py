"""Project-specific checks of deploy/, run by .ci/validate-deploy after the generic validators.

The generic tools (hadolint, kubernetes-validate, yamllint, systemd-analyze) know the formats but
not this service. These checks know what zt-risk-sidecar needs, and that the three deployments
agree with each other and with the binary:

  dockerfile   policy of deploy/Dockerfile and the build context its .dockerignore lets through
  kubernetes   policy of deploy/kubernetes/*.yaml (security context, probes, secret, grace period)
  systemd      policy of deploy/systemd/zt-risk-sidecar.service (credential, reload, stop timeout)
  contract     the flags the deploy files pass exist in the binary, and the binary starts with the
               deployed configuration, answers /healthz /readyz /metrics, survives SIGHUP and
               exits 0 on SIGTERM within its grace period

Each check prints one line per rule: "ok" or "FAIL". The exit status is 1 when any rule failed.
Needs Python 3.11 (tomllib) and PyYAML (kubernetes only).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
KUBERNETES = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "zt-risk-sidecar.service"
DEFAULT_CONFIG = ROOT / "config" / "sidecar.toml"
# The Debian package (and so the systemd unit) installs to /usr/bin; the container image keeps
# /usr/local/bin, where a binary not owned by a distribution package belongs.
UNIT_BINARY_PATH = "/usr/bin/zt-risk-sidecar"
IMAGE_BINARY_PATH = "/usr/local/bin/zt-risk-sidecar"
ADMIN_PORT = 14481

failures = 0


def rule(ok: bool, what: str, detail: str = "") -> bool:
    """Prints one rule's result and counts failures."""
    global failures
    if ok:
        print(f"  ok    {what}")
    else:
        failures += 1
        print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))
    return ok


def parse_duration(text: str) -> float:
    """Seconds in a humantime-style duration such as "10s", "500ms", "1m 30s" or systemd's "30s"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    for number, unit in parts:
        total += float(number) * units[unit or "s"]
    return total


def shutdown_grace(config_text: str) -> float:
    return parse_duration(tomllib.loads(config_text).get("shutdown_grace", "10s"))


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def ignore_pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus **): * and ? stop at a slash."""
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        index += 1
    return re.compile(out + r"\Z")


def context_includes(path: str, patterns: list[str]) -> bool:
    """Whether the build context keeps `path`: the last matching pattern wins, and a pattern that
    matches a parent directory matches everything in it."""
    parents = path.split("/")
    candidates = ["/".join(parents[: depth + 1]) for depth in range(len(parents))]
    included = True
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        pattern = os.path.normpath(pattern.strip()).strip("/")
        regex = ignore_pattern_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            included = negated
    return included


def tracked_files() -> list[str]:
    try:
        listing = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True
        ).stdout
        return [line for line in listing.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        return [
            str(path.relative_to(ROOT))
            for path in ROOT.rglob("*")
            if path.is_file() and ".git" not in path.parts and "target" not in path.parts
        ]


def check_dockerfile() -> None:
    print(f"dockerfile: {DOCKERFILE.relative_to(ROOT)} and {DOCKERIGNORE.relative_to(ROOT)}")
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    rule(len(stages) >= 2, "multi-stage build", f"{len(stages)} stage(s)")
    final = stages[-1] if stages else []
    final_from = final[0][1] if final else ""
    rule(not final_from.startswith("rust"), "the runtime stage is not the Rust toolchain image", final_from)
    builds = [a for k, a in instructions if k == "RUN" and "cargo build" in a]
    rule(
        any("--release" in a and "--locked" in a and "--no-default-features" in a for a in builds),
        "the build stage runs cargo build --release --locked --no-default-features (no simulator)",
    )
    users = [a for k, a in final if k == "USER"]
    user = users[-1] if users else ""
    uid = user.split(":")[0]
    rule(uid.isdigit() and int(uid) != 0, "the runtime stage ends with a numeric non-root USER", user or "no USER")
    healthchecks = [a for k, a in final if k == "HEALTHCHECK"]
    rule(
        any(f"127.0.0.1:{ADMIN_PORT}/healthz" in a for a in healthchecks),
        f"HEALTHCHECK probes http://127.0.0.1:{ADMIN_PORT}/healthz",
    )
    rule(not any(k == "EXPOSE" for k, _ in instructions), "no EXPOSE (the listeners are loopback)")
    entrypoints = [a for k, a in final if k == "ENTRYPOINT"]
    rule(
        bool(entrypoints) and IMAGE_BINARY_PATH in entrypoints[-1],
        f"ENTRYPOINT runs {IMAGE_BINARY_PATH}",
    )
    copies = [a for k, a in final if k == "COPY" and "--from=" not in a]
    rule(
        all("config/sidecar.toml" in a for a in copies) and len(copies) == 1,
        "the runtime stage takes only the binary and config/sidecar.toml",
        "; ".join(copies),
    )

    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    needed_prefixes = ("src/", "benches/", "tests/", "examples/", "crates/")
    needed = [
        path
        for path in tracked_files()
        if path.startswith(needed_prefixes) or path in ("Cargo.toml", "Cargo.lock", "build.rs", "config/sidecar.toml")
    ]
    missing = [path for path in needed if not context_includes(path, patterns)]
    rule(
        not missing and "Cargo.lock" in needed,
        f"the build context keeps the {len(needed)} files cargo and the image need",
        ", ".join(missing[:10]) or "Cargo.lock is not tracked",
    )
    leaked = [
        path
        for path in ("target/release/zt-risk-sidecar", ".git/config", "deploy/Dockerfile", "README.md", ".env")
        if context_includes(path, patterns)
    ]
    rule(not leaked, "the build context leaves out target/, .git/, deploy/, docs and .env", ", ".join(leaked))


# --- Kubernetes ------------------------------------------------------------------------------


def load_manifests() -> list[dict]:
    import yaml  # PyYAML, from the CI venv

    documents: list[dict] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append(document)
    return documents


def check_kubernetes() -> None:
    print(f"kubernetes: {KUBERNETES.relative_to(ROOT)}/*.yaml")
    documents = load_manifests()
    by_kind: dict[str, list[dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    deployments = by_kind.get("Deployment", [])
    config_maps = by_kind.get("ConfigMap", [])
    secrets = by_kind.get("Secret", [])
    if not rule(len(deployments) == 1 and len(config_maps) == 1 and secrets,
                "one Deployment, one ConfigMap, Secrets"):
        return
    pod = deployments[0]["spec"]["template"]["spec"]
    config_map = config_maps[0]
    secrets_by_name = {secret["metadata"]["name"]: secret for secret in secrets}

    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    if not rule(len(sidecars) == 1, "the sidecar is a native sidecar (initContainer, restartPolicy: Always)"):
        return
    sidecar = sidecars[0]
    containers = pod.get("initContainers", []) + pod.get("containers", [])

    pod_security = pod.get("securityContext", {})
    rule(pod_security.get("runAsNonRoot") is True, "pod runAsNonRoot")
    rule(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
    rule(pod.get("automountServiceAccountToken") is False, "no service account token is mounted")
    for container in containers:
        name = container["name"]
        security = container.get("securityContext", {})
        rule(
            security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
            and security.get("readOnlyRootFilesystem") is True
            and security.get("allowPrivilegeEscalation") is False
            and security.get("capabilities", {}).get("drop") == ["ALL"]
            and not security.get("capabilities", {}).get("add")
            and security.get("seccompProfile", pod_security.get("seccompProfile", {})).get("type") == "RuntimeDefault",
            f"{name}: non-root, read-only root, no privilege escalation, ALL capabilities dropped, RuntimeDefault seccomp",
        )
        resources = container.get("resources", {})
        rule(
            all(key in resources.get(kind, {}) for kind in ("requests", "limits") for key in ("cpu", "memory")),
            f"{name}: cpu and memory requests and limits",
        )

    config_text = config_map["data"]["sidecar.toml"]
    config = tomllib.loads(config_text)
    listen_host = config.get("listen", "127.0.0.1:14480").rsplit(":", 1)[0]
    rule(listen_host in ("127.0.0.1", "[::1]", "localhost"), "the lookup listener is loopback", config.get("listen", ""))
    admin = config.get("admin_listen", f"127.0.0.1:{ADMIN_PORT}")
    admin_host, admin_port = admin.rsplit(":", 1)
    rule(
        int(admin_port) == ADMIN_PORT and admin_host not in ("127.0.0.1", "[::1]", "localhost"),
        f"admin_listen is reachable on the pod IP at port {ADMIN_PORT} (the kubelet probes the pod IP)",
        admin,
    )

    probes = {kind: sidecar.get(kind, {}).get("httpGet", {}) for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    rule(
        probes["livenessProbe"].get("path") == "/healthz" and probes["livenessProbe"].get("port") == ADMIN_PORT,
        f"liveness: httpGet /healthz on {ADMIN_PORT}",
    )
    rule(
        probes["readinessProbe"].get("path") == "/readyz" and probes["readinessProbe"].get("port") == ADMIN_PORT,
        f"readiness: httpGet /readyz on {ADMIN_PORT}",
    )
    rule(
        probes["startupProbe"].get("path") == "/readyz" and probes["startupProbe"].get("port") == ADMIN_PORT,
        f"startup: httpGet /readyz on {ADMIN_PORT} (the app starts after it passes)",
    )

    grace = shutdown_grace(config_text)
    period = pod.get("terminationGracePeriodSeconds", 30)
    rule(period > grace + 5, f"terminationGracePeriodSeconds ({period}) exceeds shutdown_grace ({grace:g}s) by more than 5s")

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {mount["name"]: mount for mount in sidecar.get("volumeMounts", [])}
    args = sidecar.get("args", [])
    rule(pod_security.get("fsGroup") is not None, "pod fsGroup is set, so the non-root sidecar can read 0400 secrets")

    def check_secret_file(what: str, path: str | None) -> None:
        """`path` is a file of a Secret volume mounted read-only into the sidecar only, mode 0400,
        and the example Secret holds a marked placeholder under that key."""
        if not rule(bool(path), f"{what}: a file path is configured"):
            return
        directory, _, file_name = str(path).rpartition("/")
        mount = next((m for m in mounts.values() if m["mountPath"].rstrip("/") == directory), None)
        volume = volumes.get(mount["name"], {}) if mount else {}
        source = volume.get("secret")
        if not rule(source is not None, f"{what}: {path} is in a mounted Secret volume"):
            return
        rule(source.get("defaultMode") == 0o400, f"{what}: defaultMode 0400", str(source.get("defaultMode")))
        rule(mount.get("readOnly") is True, f"{what}: the mount is readOnly")
        for container in pod.get("containers", []):
            rule(
                volume["name"] not in {m["name"] for m in container.get("volumeMounts", [])},
                f"{what}: {container['name']} does not mount it",
            )
        key = next((item["key"] for item in source.get("items", []) if item["path"] == file_name), file_name)
        secret = secrets_by_name.get(source.get("secretName"), {})
        value = str(secret.get("stringData", {}).get(key, ""))
        rule("PLACEHOLDER" in value, f"{what}: Secret {source.get('secretName')} has key {key} with a marked placeholder")

    token_file = args[args.index("--token-file") + 1] if "--token-file" in args else None
    check_secret_file("Cloudflare token (--token-file)", token_file)
    rule(
        not any(env.get("name") == "CLOUDFLARE_API_TOKEN" for env in sidecar.get("env", [])),
        "the Cloudflare token is not passed as an environment variable",
    )
    if admin_host not in ("127.0.0.1", "[::1]", "localhost"):
        # The admin port is reachable from the pod network: it must not serve purge and metrics
        # to anyone who asks.
        check_secret_file("admin token (admin_token_file, required off loopback)", config.get("admin_token_file"))

    if config.get("redis_url"):
        # The fleet tier (issue 15): the fleet key and the Redis password are secrets like the
        # tokens, and the fleet size is the number of replicas sharing one budget.
        check_secret_file("fleet key (fleet_key_file)", config.get("fleet_key_file"))
        if config.get("redis_password_file"):
            check_secret_file("Redis password (redis_password_file)", config.get("redis_password_file"))
        replicas = deployments[0]["spec"].get("replicas", 1)
        rule(config.get("fleet_size") == replicas, f"fleet_size equals the Deployment's replicas ({replicas})",
             str(config.get("fleet_size")))
        acl_line = (ROOT / "deploy" / "redis" / "users.acl").read_text().strip()
        acl_secrets = [str(secret.get("stringData", {}).get("users.acl", "")) for secret in secrets]
        rule(any(acl_line in text.splitlines() for text in acl_secrets),
             "the example Redis's ACL Secret holds deploy/redis/users.acl's line (the one the tests prove)")

    config_volumes = [v for v in volumes.values() if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    config_mount = mounts.get(config_volumes[0]["name"], {}) if config_volumes else {}
    config_path = f"{config_mount.get('mountPath', '?')}/sidecar.toml"
    rule(
        "--config" in args and args[args.index("--config") + 1] == config_path and config_mount.get("readOnly") is True,
        f"--config points at the read-only ConfigMap mount {config_path}",
    )
    app_env = {e["name"]: e.get("value", "") for c in pod.get("containers", []) for e in c.get("env", [])}
    rule(
        app_env.get("CLOUDFLARE_BASE_URL", "").startswith(f"http://{config.get('listen', '127.0.0.1:14480')}/"),
        "the app's CLOUDFLARE_BASE_URL points at the sidecar's listen address",
        app_env.get("CLOUDFLARE_BASE_URL", "unset"),
    )


# --- systemd ---------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def check_systemd() -> None:
    print(f"systemd: {UNIT.relative_to(ROOT)}")
    settings = unit_settings(UNIT.read_text())

    def last(key: str) -> str | None:
        return settings.get(key, [None])[-1]

    exec_start = last("ExecStart") or ""
    rule(
        exec_start.startswith(UNIT_BINARY_PATH + " "), f"ExecStart runs {UNIT_BINARY_PATH}"
    )
    rule("--config /etc/zt-risk-sidecar/sidecar.toml" in exec_start, "--config /etc/zt-risk-sidecar/sidecar.toml")
    credential = (last("LoadCredential") or "").split(":", 1)[0]
    rule(
        bool(credential) and f"--token-file ${{CREDENTIALS_DIRECTORY}}/{credential}" in exec_start,
        "--token-file reads the LoadCredential= credential",
    )
    rule(last("ExecReload") == "/bin/kill -HUP $MAINPID", "reload sends SIGHUP")
    rule(last("KillSignal") == "SIGTERM", "stop sends SIGTERM")
    grace = shutdown_grace(DEFAULT_CONFIG.read_text())
    timeout = parse_duration(last("TimeoutStopSec") or "90s")
    rule(timeout > grace + 5, f"TimeoutStopSec ({timeout:g}s) exceeds shutdown_grace ({grace:g}s) by more than 5s")
    for key, value in (
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
    ):
        rule(last(key) == value, f"{key}={value}", f"found {last(key)!r}")
    rule(
        settings.get("SystemCallFilter") == ["@system-service", "~@privileged @resources"],
        "SystemCallFilter=@system-service without @privileged @resources",
    )


# --- The binary ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, bearer: str | None = None) -> int | None:
    request = urllib.request.Request(url)
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def deployed_flags() -> set[str]:
    """Every --flag the deploy files pass to the binary."""
    import yaml

    texts = []
    for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword in ("CMD", "ENTRYPOINT"):
            texts.append(arguments)
    for document in yaml.safe_load_all((KUBERNETES / "sidecar-example.yaml").read_text()):
        pod = document["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            if "zt-risk-sidecar" in container.get("image", ""):
                texts.extend(container.get("command", []) + container.get("args", []))
    texts.extend(unit_settings(UNIT.read_text()).get("ExecStart", []))
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(texts)))


def with_port(config_text: str, key: str, port: int) -> str:
    """The configuration with the port of `key` (an address) replaced, its host kept."""
    pattern = re.compile(rf'^({key}\s*=\s*"[^"]*:)\d+(")', re.MULTILINE)
    if not pattern.search(config_text):
        raise SystemExit(f"the configuration has no {key} key to move to a free port")
    return pattern.sub(rf"\g<1>{port}\g<2>", config_text)


def smoke_run(binary: str, name: str, config_text: str, ports_in_file: bool, json_logs: bool) -> None:
    """Starts the binary with a deployed configuration on free ports and exercises the admin
    endpoints, SIGHUP and SIGTERM. With ports_in_file, the file's listen and admin_listen keep
    their hosts and get free ports (so a non-loopback admin_listen is really bound); otherwise
    --listen and --admin-listen move both listeners to free loopback ports."""
    with tempfile.TemporaryDirectory(prefix="zt-deploy-check-") as scratch:
        listen, admin = free_port(), free_port()
        config_path = Path(scratch) / "sidecar.toml"
        token_path = Path(scratch) / "token"
        token_path.write_text("validate-deploy-dummy-token\n")
        token_path.chmod(0o400)
        command = [binary, "--config", str(config_path), "--token-file", str(token_path)]
        if ports_in_file:
            config_text = with_port(with_port(config_text, "listen", listen), "admin_listen", admin)
        else:
            command += ["--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}"]
        # A configured admin token file (a mounted Secret in production) becomes a scratch file.
        admin_token = None
        admin_token_key = re.compile(r'^(admin_token_file\s*=\s*)"[^"]*"', re.MULTILINE)
        if admin_token_key.search(config_text):
            admin_token = "validate-deploy-admin-token"
            admin_token_path = Path(scratch) / "admin-token"
            admin_token_path.write_text(admin_token + "\n")
            admin_token_path.chmod(0o400)
            config_text = admin_token_key.sub(lambda m: f'{m.group(1)}"{admin_token_path}"', config_text)
        # The fleet's files (mounted Secrets in production) become scratch files too, and Redis an
        # address where nothing listens: the sidecar must start, probe and drain without it.
        fleet_key = re.compile(r'^(fleet_key_file\s*=\s*)"[^"]*"', re.MULTILINE)
        if fleet_key.search(config_text):
            fleet_key_path = Path(scratch) / "fleet-key"
            fleet_key_path.write_text("validate-deploy-fleet-key-" + "0123456789abcdef" * 2 + "\n")
            fleet_key_path.chmod(0o400)
            config_text = fleet_key.sub(lambda m: f'{m.group(1)}"{fleet_key_path}"', config_text)
        redis_password = re.compile(r'^(redis_password_file\s*=\s*)"[^"]*"', re.MULTILINE)
        if redis_password.search(config_text):
            redis_password_path = Path(scratch) / "redis-password"
            redis_password_path.write_text("validate-deploy-redis-password\n")
            redis_password_path.chmod(0o400)
            config_text = redis_password.sub(lambda m: f'{m.group(1)}"{redis_password_path}"', config_text)
        redis_url = re.compile(r'^(redis_url\s*=\s*"redis://[^@"]*@)[^"]*"', re.MULTILINE)
        config_text = redis_url.sub(lambda m: f'{m.group(1)}127.0.0.1:{free_port()}"', config_text)
        config_path.write_text(config_text)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("ZT_SIDECAR_")}
        environment.pop("CLOUDFLARE_API_TOKEN", None)
        environment["RUST_LOG"] = "info"
        log_path = Path(scratch) / "output.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        try:
            base = f"http://127.0.0.1:{admin}"
            deadline = time.monotonic() + 15
            status = None
            while time.monotonic() < deadline and process.poll() is None:
                status = http_status(base + "/healthz")
                if status is not None:
                    break
                time.sleep(0.1)
            output = lambda: log_path.read_text(errors="replace").strip()[-2000:]  # noqa: E731
            if not rule(status == 200, f"{name}: starts and answers GET /healthz 200",
                        f"status {status}, exit code {process.poll()}, output:\n{output()}"):
                return
            ready_by = time.monotonic() + 5
            while http_status(base + "/readyz") != 200 and time.monotonic() < ready_by:
                time.sleep(0.1)
            rule(http_status(base + "/readyz") == 200, f"{name}: GET /readyz 200 (within 5s of /healthz)")
            if admin_token is None:
                rule(http_status(base + "/metrics") == 200, f"{name}: GET /metrics 200 (no admin token configured)")
            else:
                rule(http_status(base + "/metrics") == 401, f"{name}: GET /metrics without the admin token 401")
                rule(
                    http_status(base + "/metrics", bearer=admin_token) == 200,
                    f"{name}: GET /metrics with the admin token 200",
                )
            rule(
                http_status(f"http://127.0.0.1:{listen}/no-such-route") == 404,
                f"{name}: the lookup listener answers on its own port (404 for an unknown path)",
            )
            process.send_signal(signal.SIGHUP)
            # Wait for the sidecar's own word that it handled the reload (its log line), not for a
            # fixed time: a sleep passes before a slow reload is done and wastes time on a quick one.
            reloaded_by = time.monotonic() + 10
            reload_lines = ("SIGHUP: configuration reloaded", "SIGHUP: configuration rejected")
            while process.poll() is None and time.monotonic() < reloaded_by:
                if any(line in log_path.read_text(errors="replace") for line in reload_lines):
                    break
                time.sleep(0.05)
            logged_reload = log_path.read_text(errors="replace")
            rule(
                "SIGHUP: configuration reloaded" in logged_reload,
                f"{name}: SIGHUP (systemctl reload) applies the deployed configuration again (logged within 10s)",
                f"exit code {process.poll()}, output:\n{output()}",
            )
            rule(
                process.poll() is None and http_status(base + "/healthz") == 200,
                f"{name}: survives SIGHUP (systemctl reload) and still answers /healthz",
                f"exit code {process.poll()}, output:\n{output()}",
            )
            if process.poll() is None:
                grace = shutdown_grace(config_text)
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(timeout=grace + 5)
                except subprocess.TimeoutExpired:
                    code = None
                rule(code == 0, f"{name}: SIGTERM drains and exits 0 within shutdown_grace", f"exit code {code}")
            if json_logs:
                lines = [line for line in log_path.read_text().splitlines() if line.strip()]
                not_json = [line for line in lines if not _is_json_object(line)]
                rule(bool(lines) and not not_json, f"{name}: log_format json gives one JSON object per line",
                     not_json[0][:200] if not_json else "no output")
            logged = log_path.read_text()
            rule(
                "validate-deploy-dummy-token" not in logged and "validate-deploy-admin-token" not in logged
                and "validate-deploy-fleet-key" not in logged and "validate-deploy-redis-password" not in logged,
                f"{name}: no token, fleet key or Redis password appears in any log line",
            )
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def check_contract(binary: str) -> None:
    import yaml

    print(f"contract: {binary} against the deploy files")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=False).stdout
    for flag in sorted(deployed_flags() | {"--listen", "--admin-listen"}):
        rule(re.search(rf"(?<![\w-]){re.escape(flag)}\b", help_text) is not None, f"the binary accepts {flag}")
    config_map = next(
        document
        for document in yaml.safe_load_all((KUBERNETES / "sidecar-configmap.yaml").read_text())
        if document and document.get("kind") == "ConfigMap"
    )
    smoke_run(binary, "config/sidecar.toml (image and systemd)", DEFAULT_CONFIG.read_text(),
              ports_in_file=False, json_logs=False)
    smoke_run(binary, "ConfigMap sidecar.toml (Kubernetes)", config_map["data"]["sidecar.toml"],
              ports_in_file=True, json_logs=True)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    check = sys.argv[1]
    if check == "dockerfile":
        check_dockerfile()
    elif check == "kubernetes":
        check_kubernetes()
    elif check == "systemd":
        check_systemd()
    elif check == "contract" and len(sys.argv) == 3:
        check_contract(sys.argv[2])
    else:
        print(__doc__)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

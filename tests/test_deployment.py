"""TLS certificates from ``fedrec.server.tls``, and (slow) the federation through Flower's
own CLI, as a user runs it (docs/deployment.md):

- ``flwr run .`` on this machine: the Simulation Engine behind a local SuperLink that ``flwr``
  starts itself, with the run config overridden on the command line;
- the Deployment Engine over TLS on loopback: a SuperLink with a certificate from
  ``fedrec.server.tls``, two SuperNodes that trust only its CA, and ``flwr run . NAME``.

Every process gets its own FLWR_HOME (as on separate machines) and runtime dependency
installation is off (it would ``uv sync`` a CUDA torch). Each test stops every process it
started, and their children, and fails if one outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from fedrec.server.tls import main as tls_main
from fedrec.server.tls import make_ca, subject_alternative_names, write_certificates

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds and stops processes through /proc"
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flwr spawns flower-superlink, flower-superexec by name
TINY = (
    'data="demo" rounds=2 model-hidden-dim=16 model-pool-window=5 '
    "local-batch-size=8 local-negatives=10 local-max-examples=24 local-context=5"
)
#: distributed DP through SecAgg+ on three devices (SecAgg+ needs at least three shares)
SECURE_RUN = "dp-distributed=true secure-aggregation=true secagg-shares=3 secagg-threshold=2"
RUN_TIMEOUT_S = 480


def test_certificates_name_the_hosts_and_loopback_and_chain_to_the_ca(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, ["10.1.2.3", "Link.Example.org"], days=30)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    dns = names.get_values_for_type(x509.DNSName)
    assert (ips, dns) == (["10.1.2.3", "127.0.0.1"], ["link.example.org", "localhost"]), (
        f"server certificate names IPs {ips} and DNS names {dns}"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, "CA is no CA"
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH], f"server EKU: {usage}"
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 30 <= lifetime.days <= 31, f"server certificate lives {lifetime}"
    for key in (files.ca_key, files.server_key):
        assert key.stat().st_mode & 0o777 == 0o600, f"{key.name} has mode {key.stat().st_mode:o}"


def test_a_new_server_certificate_keeps_the_ca(tmp_path: Path) -> None:
    first = write_certificates(tmp_path)
    ca_before, server_before = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    second = write_certificates(tmp_path, ["192.168.0.7"])
    assert second.ca_cert.read_bytes() == ca_before, "the CA was replaced"
    assert second.server_cert.read_bytes() != server_before, "no new server certificate"
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate(second.server_cert.read_bytes()).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "two words",
        "http://x/",
        " 10.0.0.1",
        "10.0.0.256",
        "link:9091",
        "[::1]",
        "a..b",
        "bücher.de",
        "-x.org",
    ],
)
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not a host name or IP address"):
        subject_alternative_names([host])


def test_nothing_is_written_or_overwritten_that_would_break_trust_or_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signing = tmp_path / "run"  # a run folder: its server.key signs the item bundles
    signing.mkdir()
    (signing / "server.key").write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    before = (signing / "server.key").read_bytes()
    with pytest.raises(ValueError, match=r"server.key is not a TLS key this tool wrote"):
        write_certificates(signing)
    assert (signing / "server.key").read_bytes() == before
    assert sorted(p.name for p in signing.iterdir()) == ["server.key"]

    half = tmp_path / "half"
    write_certificates(half)
    (half / "ca.pem").unlink()
    ca_key = (half / "ca.key").read_bytes()
    with pytest.raises(ValueError, match=r"has ca.key but not the other half of the CA pair"):
        write_certificates(half)
    assert (half / "ca.key").read_bytes() == ca_key

    mixed = tmp_path / "mixed"
    write_certificates(mixed)
    (mixed / "ca.key").write_bytes((half / "server.key").read_bytes())  # another key
    with pytest.raises(ValueError, match=r"ca.pem and its ca.key are not one pair"):
        write_certificates(mixed)
    ending = tmp_path / "ending"  # a CA with 10 days left
    ending.mkdir()
    key, cert = make_ca(days=10)
    (ending / "ca.key").write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    (ending / "ca.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    with pytest.raises(ValueError, match=r"valid for 30 days would outlive its CA"):
        write_certificates(ending, days=30)
    assert sorted(p.name for p in ending.iterdir()) == ["ca.key", "ca.pem"]
    write_certificates(tmp_path / "longest", days=3650)  # a new CA outlives it

    with pytest.raises(SystemExit) as exited:
        tls_main([str(tmp_path / "bad"), "--host", "link:9091"])
    assert exited.value.code == 2
    assert "error: not a host name or IP address: 'link:9091'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    home.mkdir(parents=True, exist_ok=True)
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "<no file>"
    return f"\n--- {path.name} (tail) ---\n{text[-chars:]}"


def _processes() -> dict[int, tuple[int, str, list[str]]]:
    """Every live process: pid -> (parent pid, state, argv)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            table[int(entry.name)] = (int(fields[1]), fields[0], argv)
    return table


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (parent, _, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _stop(pids: set[int], timeout: float = 20.0) -> set[int]:
    """SIGTERM ``pids`` and all their descendants, SIGKILL what is left after ``timeout``;
    returns the processes still alive after that (should be none)."""
    tree = set(pids)
    for pid in pids:
        tree |= _descendants(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _alive(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
    return _alive(tree)


class Launcher:
    """Starts processes with their output in files; stops them all, children included."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen[bytes]] = []
        self.adopted: set[int] = set()  # detached processes it caused, e.g. flwr's SuperLink

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder
            )
        self.started.append(process)
        return process

    def run(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        process = self.start(name, argv, env)
        try:
            return process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} ran past {RUN_TIMEOUT_S} s" + self.tails())

    def tails(self) -> str:
        return "".join(_tail(log) for log in sorted(self.folder.glob("*.log")))

    def stop(self) -> set[int]:
        running = {p.pid for p in self.started if p.poll() is None}  # reaped pids may be reused
        left = _stop(running | self.adopted)
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)  # reap
        return left


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    logs = tmp_path / "logs"
    logs.mkdir()
    launched = Launcher(logs)
    try:
        yield launched
    finally:
        left = launched.stop()
    assert not left, f"processes outlived the test: {sorted(left)}" + launched.tails()


def _check_run_folder(out: Path, devices: int, logs: str) -> None:
    metrics = out / "metrics.jsonl"
    assert metrics.is_file() and (out / "summary.json").is_file(), (
        f"the run wrote no metrics.jsonl or summary.json in {out}: "
        f"{sorted(p.name for p in out.iterdir()) if out.exists() else 'no folder'}" + logs
    )
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2], f"rounds in metrics.jsonl: {lines}" + logs
    for line in lines:
        assert line["devices"] == devices and line["failed"] == 0 and line["dropped"] == 0, (
            f"round {line['round']}: {line['devices']} devices sampled (want {devices}), "
            f"{line['failed']} failed, {line['dropped']} dropped" + logs
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == lines[-1]["metrics"], f"summary.json: {summary}" + logs


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize(
    "extra",
    ["", SECURE_RUN],
    ids=["plain", "secure-aggregation"],
)
def test_flwr_run_simulates_with_the_run_config_overridden(
    tmp_path: Path, launcher: Launcher, extra: str
) -> None:
    """``flwr run .`` with run-config overrides; also distributed DP through SecAgg+, whose
    devices get the mod and the settings from the run config alone."""
    http_port, control_port = _free_ports(2)
    env = _env(
        tmp_path / "flwr-home",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
    )
    out = tmp_path / "run"
    argv = [str(BIN / "flwr"), "run", str(ROOT), "--stream"]
    argv += ["--run-config", f"{TINY} {extra} devices=3 out={json.dumps(str(out))}"]
    argv += ["--federation-config", "num-supernodes=3"]
    try:
        code = launcher.run("flwr-run", argv, env)
    finally:
        # `flwr run .` leaves the local SuperLink it started running, detached: find it by port.
        launcher.adopted = {
            pid
            for pid, (_, _, args) in _processes().items()
            if any(a.endswith("flower-superlink") for a in args)
            and _option(args, "--port") == str(http_port)
        }
    logs = launcher.tails() + _tail(tmp_path / "flwr-home" / "local-superlink" / "superlink.log")
    assert code == 0, f"flwr run exited with {code}" + logs
    assert launcher.adopted, "found no local SuperLink on the port flwr was told to use" + logs
    _check_run_folder(out, devices=3, logs=logs)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["secure-aggregation"] == bool(extra), settings


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize(
    ("nodes", "extra"), [(2, ""), (3, SECURE_RUN)], ids=["plain", "secure-aggregation"]
)
def test_deployment_engine_over_tls_on_loopback(
    tmp_path: Path, launcher: Launcher, nodes: int, extra: str
) -> None:
    """Two rounds on SuperNodes that reach the SuperLink over TLS; also distributed DP through
    SecAgg+, whose four stages a round each start a ClientApp process per SuperNode that must
    find the protocol's state the previous stage left in the node's context."""
    files = write_certificates(tmp_path / "certs")
    port, *node_ports = _free_ports(1 + nodes)
    link = launcher.start(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            *("--ssl-ca-certfile", str(files.ca_cert)),
            *("--ssl-certfile", str(files.server_cert)),
            *("--ssl-keyfile", str(files.server_key)),
            *("--host", "127.0.0.1", "--port", str(port)),
            "--disable-runtime-dependency-installation",
        ],
        _env(tmp_path / "superlink-home"),
    )
    served = _served_certificate(port, files.ca_cert, link, launcher)
    expected = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert served == expected.public_bytes(Encoding.DER), (
        "the SuperLink does not serve the certificate it was given" + launcher.tails()
    )
    for partition, node_port in enumerate(node_ports):
        launcher.start(
            f"supernode-{partition}",
            [
                str(BIN / "flower-supernode"),
                *("--root-certificates", str(files.ca_cert)),
                *("--superlink", f"127.0.0.1:{port}"),
                *("--port", str(node_port)),  # its ClientApp runtime API, on loopback
                *("--node-config", f"partition-id={partition} num-partitions={nodes}"),
            ],
            _env(tmp_path / f"supernode-{partition}-home"),
        )
    cli_home = tmp_path / "flwr-home"
    env = _env(cli_home)
    (cli_home / "config.toml").write_text(
        f'[superlink.fedrec-tls]\naddress = "127.0.0.1:{port}"\n'
        f"root-certificates = {json.dumps(str(files.ca_cert))}\n"
    )
    out = tmp_path / "run"
    argv = [str(BIN / "flwr"), "run", str(ROOT), "fedrec-tls", "--stream"]
    argv += ["--run-config", f"{TINY} {extra} devices={nodes} out={json.dumps(str(out))}"]
    code = launcher.run("flwr-run", argv, env)
    logs = launcher.tails()
    assert code == 0, f"flwr run exited with {code}" + logs
    _check_run_folder(out, devices=nodes, logs=logs)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["secure-aggregation"] == bool(extra), settings
    died = [p.args[0] for p in launcher.started[:-1] if p.poll() is not None]
    assert not died, f"died during the run: {died}" + logs


def _served_certificate(
    port: int, ca_cert: Path, link: subprocess.Popen[bytes], launcher: Launcher
) -> bytes:
    """The DER certificate the SuperLink presents once it listens, verified against our CA
    for the name 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + 60
    while True:
        assert link.poll() is None, "the SuperLink exited on start" + launcher.tails()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                served = tls.getpeercert(binary_form=True)
                assert served is not None, "the SuperLink presented no certificate"
                return served
        except ssl.SSLError as error:
            pytest.fail(f"TLS with the SuperLink failed: {error}" + launcher.tails())
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail("the SuperLink did not listen within 60 s" + launcher.tails())
            time.sleep(0.5)

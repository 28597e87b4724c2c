"""The ssh:// target against a real OpenSSH server on loopback.

The server has a throwaway host key, user key and sshd_config under a temporary folder. The client side is
hermetic too: HOME points at a temporary folder whose .ssh/config (a host alias, UserKnownHostsFile, no other
identities) and .ssh/known_hosts are the only ones read. OpenSSH reads ~/.ssh from the password database, not
from $HOME, so a two-line `ssh` on PATH adds `-F $HOME/.ssh/config` (and counts the calls); the real ~/.ssh is
never read or written. The device's Python is this one, which has onnxruntime. The server runs as the user
running the tests and lets that user in (as root it needs its privilege separation folder, made if absent); the
tests skip only when sshd cannot start here for a reason of the machine's, never for one of the test's config.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgepress.cli import main as cli
from edgepress.core.errors import UserError
from edgepress.targets import TargetOptions, open_target
from edgepress.targets.ssh import PID_FILE
from edgepress.running.pipeline import INCOMPLETE_TARGETS
from tests.conftest import TINY_RECIPE, assert_one_line_error, run_cli, write_recipe
from tests.runner_processes import kill_once_timing, wait_for

SSHD = Path("/usr/sbin/sshd")
ALIAS = "edgepress-test-device"
PAYLOAD = "a b'c\"d $(cd ..;touch PWNED) `touch PWNED`;touch PWNED"
USER = getpass.getuser()  # a non-root sshd lets in only the user it runs as
PRIVSEP_DIR = Path("/run/sshd")  # Debian's; only sshd running as root needs it
# sshd's words when it cannot start for a reason of the machine's (no privilege separation user or folder, no
# loopback port to bind, a sandbox that forbids its system calls), not of the config these tests write
MACHINE_REASONS = ("privilege separation", "Cannot bind any address", "Address already in use",
                   "Operation not permitted")

pytestmark = pytest.mark.skipif(not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="needs OpenSSH's sshd, ssh and ssh-keygen (apt install openssh-server)")


@dataclass(frozen=True)
class Server:
    port: int
    host_key_line: str  # for known_hosts
    user_key: Path


@dataclass(frozen=True)
class Client:
    home: Path
    known_hosts: Path
    calls: Path  # one line per ssh connection

    def count(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepress-test", "-f", str(path)], check=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_banner(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.poll() is not None:
            said = log.read_text(errors="replace").strip()
            if any(reason in said for reason in MACHINE_REASONS):
                pytest.skip(f"sshd cannot start on this machine as {USER}: {' '.join(said.split())[:300]}")
            pytest.fail(f"sshd exited ({server.returncode}): {said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                if connection.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not answer on port {port}: {log.read_text()}")


def _privilege_separation_folder() -> None:
    """sshd started by root refuses to run without its (empty, root-owned) privilege separation folder."""
    if os.geteuid() != 0 or PRIVSEP_DIR.is_dir():
        return
    try:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
    except OSError as exc:
        pytest.skip(f"sshd as root needs {PRIVSEP_DIR}, which cannot be made here: {exc}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "host_key")
    _keygen(root / "user_key")
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PrintMotd no
""")
    _privilege_separation_folder()
    log = root / "sshd.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config), "-p", str(port)], stdout=sink, stderr=sink)
    try:
        _wait_for_banner(port, server, log)
        key_type, key = (root / "host_key.pub").read_text().split()[:2]
        yield Server(port=port, host_key_line=f"[127.0.0.1]:{port} {key_type} {key}\n", user_key=root / "user_key")
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def client(sshd, tmp_path, monkeypatch) -> Client:
    home = tmp_path / "home"
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True, mode=0o700)
    known_hosts = dot_ssh / "known_hosts"
    known_hosts.write_text(sshd.host_key_line)
    (dot_ssh / "config").write_text(f"""\
Host {ALIAS}
    HostName 127.0.0.1
    Port {sshd.port}
    User {USER}
    IdentityFile {sshd.user_key}

Host *
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    IdentitiesOnly yes
""")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "ssh-calls"
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = -G ] || echo connect >> "{calls}"\n'  # -G: config only
                       f'exec {shutil.which("ssh")} -F "$HOME/.ssh/config" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return Client(home=home, known_hosts=known_hosts, calls=calls)


def _tiny_model(path: Path, scale: float) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array((np.eye(16) * scale).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    return _tiny_model(tmp_path / "tiny.onnx", 1.0), _tiny_model(tmp_path / "other.onnx", 2.0)


def _bench(tmp_path: Path, model: Path, target: str, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    code = cli.main(["bench", str(model), "--target", target, "--runs", "20", "--warmup", "2",
                     "--python", sys.executable, "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def _remote_folders() -> set[Path]:
    return set(Path("/tmp").glob("edgepress-ssh-*"))


def _check_compare(result: dict, target: str, model: str, other: str) -> None:
    assert result["target"] == target and result["emulated"] is False and result["model"] == model
    assert set(result["latency_ms"]) >= {"p50", "p90", "p95", "p99", "mean", "std", "min", "max"}
    for key in ("p50_ci95_ms", "session_create_ms", "first_run_ms", "peak_memory_bytes", "size_bytes"):
        assert key in result, key
    assert result["runs"] == 20 and result["size_bytes"] > 0 and result["peak_memory_bytes"] > 0
    assert result["latency_ms"]["min"] <= result["latency_ms"]["p50"] <= result["latency_ms"]["max"]
    compare = result["compare"]
    assert compare["model"] == other and compare["p50_ratio"] > 0
    low, high = compare["p50_ratio_ci95"]
    assert 0 < low <= high


def test_bench_through_an_alias_of_ssh_config(client, models, tmp_path):
    model, other = models
    before = _remote_folders()
    result = _bench(tmp_path, model, f"ssh://{ALIAS}", "--compare", str(other))
    _check_compare(result, f"ssh://{ALIAS}", "tiny.onnx", "other.onnx")
    assert _remote_folders() == before  # the working folder in the device's /tmp is gone
    assert client.count() == 3  # copy, run, remove: nothing retried


def test_bench_through_user_host_port_and_identity_file(sshd, client, models, tmp_path):
    model, other = models
    workdir = tmp_path / "device work"
    target = f"ssh://{USER}@127.0.0.1:{sshd.port}"
    result = _bench(tmp_path, model, target, "--compare", str(other), "--identity-file", str(sshd.user_key),
                    "--workdir", str(workdir))
    _check_compare(result, target, "tiny.onnx", "other.onnx")
    assert workdir.is_dir() and list(workdir.iterdir()) == []


def test_bench_an_ort_model_against_an_onnx_one_on_the_device(client, models, tmp_path, capsys):
    """An .ort travels and runs like an .onnx: timed against the other format on the device, profiled there; one
    the host can tell is truncated never leaves it, and one the device's onnxruntime refuses (an ORT format
    newer than it reads) is its one line, relayed, with the working folder gone."""
    from tests.conftest import main_one_line_error
    from tests.test_bench_cli import _newer_format, ort_of

    model, other = models
    converted = ort_of(model)
    before = _remote_folders()
    result = _bench(tmp_path, converted, f"ssh://{ALIAS}", "--compare", str(other), "--profile")
    _check_compare(result, f"ssh://{ALIAS}", "tiny.ort", "other.onnx")
    assert result["size_bytes"] == converted.stat().st_size and result["compare"]["size_bytes"] == other.stat().st_size
    assert {row["op_type"] for row in result["profile"]["by_op_type"]} <= {"MatMul", "Relu"}
    assert _remote_folders() == before and client.count() == 3

    cut = tmp_path / "cut.ort"
    cut.write_bytes(converted.read_bytes()[:200])
    main_one_line_error(capsys, ["bench", str(cut), "--target", f"ssh://{ALIAS}", "--python", sys.executable],
                        "cut.ort is not a valid ORT-format model")
    assert client.count() == 3  # refused on the host: no connection made
    newer = _newer_format(converted, tmp_path / "newer.ort")
    main_one_line_error(capsys, ["bench", str(newer), "--target", f"ssh://{ALIAS}", "--python", sys.executable],
                        f"on ssh://{ALIAS}:", "cannot load 'newer.ort'", "ORT format model version [9]",
                        "the device's onnxruntime version")
    assert _remote_folders() == before and client.count() == 6  # copy, run, remove; never retried


def test_shell_metacharacters_reach_the_device_as_plain_words(sshd, client, tmp_path):
    model = _tiny_model(tmp_path / f"{PAYLOAD}.onnx", 1.0)
    other = _tiny_model(tmp_path / f"{PAYLOAD} 2.onnx", 3.0)
    workdir = tmp_path / "up" / f"work {PAYLOAD}"
    result = _bench(tmp_path, model, f"ssh://{ALIAS}", "--compare", str(other), "--workdir", str(workdir))
    assert result["model"] == model.name and result["compare"]["model"] == other.name
    assert list(workdir.iterdir()) == []
    # the payloads would have touched PWNED in the working folder's parent, the folder above it or the home
    places = [tmp_path, tmp_path / "up", workdir, Path.cwd(), client.home, Path.home(), Path("/")]
    assert not [place for place in places if (place / "PWNED").exists()]

    # a Python path with metacharacters is one word too: not found, nothing run
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=f"/nonexistent/{PAYLOAD}/python3",
                                                                 workdir=str(workdir)))
    with pytest.raises(UserError, match="not found on ssh://"):
        target.run(files=[model], args=["bench", model.name, "--runs", "5"])
    assert not [place for place in places if (place / "PWNED").exists()]
    assert list(workdir.iterdir()) == []


def test_rm_rf_in_a_path_is_inert(sshd, client, tmp_path):
    """A folder path may hold slashes, so here the payload can name a real folder to delete: it must survive."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "alive").write_text("yes")
    payload = f"; rm -rf {canary} ; $(rm -rf {canary}) `rm -rf {canary}` && rm -rf {canary} #"
    model = _tiny_model(tmp_path / "rm -rf ; $(rm -rf ..).onnx", 1.0)
    workdir = tmp_path / "up" / f"work {payload}"
    result = _bench(tmp_path, model, f"ssh://{ALIAS}", "--workdir", str(workdir))
    assert result["model"] == model.name and result["runs"] == 20
    assert (canary / "alive").read_text() == "yes"
    assert workdir.is_dir() and list(workdir.iterdir()) == []


def test_runner_result_and_fetch_through_the_target_api(client, models, tmp_path):
    model, _ = models
    inputs = tmp_path / "x.npz"
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.savez(inputs, x=x)
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=sys.executable))
    into = tmp_path / "back"
    result = target.run(files=[model, inputs], args=["predict", model.name, "--inputs", inputs.name, "--out", "y.npz"],
                        fetch=["y.npz"], into=into)
    assert result["samples"] == 3
    with np.load(into / "y.npz") as outputs:
        np.testing.assert_allclose(outputs["y"], np.maximum(x, 0), rtol=1e-6)


def test_unknown_host_key_is_refused(sshd, client, models):
    client.known_hosts.write_text("")
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=sys.executable))
    with pytest.raises(UserError) as caught:
        target.run(files=[models[0]], args=["bench", "tiny.onnx", "--runs", "5"])
    line = caught.value.one_line()
    assert "host key of 127.0.0.1 port" in line and "not in known_hosts" in line, line
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> ~/.ssh/known_hosts" in line, line
    assert f"connect once with ssh {ALIAS} and answer yes" in line, line
    assert "\n" not in str(caught.value)
    assert client.known_hosts.read_text() == ""  # nothing was accepted on the way
    assert client.count() == 1  # a refused key is not retried


def test_changed_host_key_is_refused(sshd, client, models, tmp_path):
    _keygen(tmp_path / "impostor")
    key_type, key = (tmp_path / "impostor.pub").read_text().split()[:2]
    client.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key}\n")
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=sys.executable))
    with pytest.raises(UserError, match="differs from the one in known_hosts") as caught:
        target.run(files=[models[0]], args=["bench", "tiny.onnx", "--runs", "5"])
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in caught.value.one_line()


def test_relaxed_host_key_checking_connects_and_records_nothing(client, models):
    client.known_hosts.write_text("")
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=sys.executable,
                                                                 strict_host_key_checking=False))
    result = target.run(files=[models[0]], args=["bench", "tiny.onnx", "--runs", "5", "--warmup", "1"])
    assert result["runs"] == 5
    assert client.known_hosts.read_text() == ""


def test_authentication_refused(sshd, client, models, tmp_path):
    _keygen(tmp_path / "stranger")
    target = open_target(f"ssh://{USER}@127.0.0.1:{sshd.port}",
                         options=TargetOptions(python=sys.executable, identity_file=tmp_path / "stranger"))
    with pytest.raises(UserError, match=f"refused authentication as {USER}@127.0.0.1") as caught:
        target.run(files=[models[0]], args=["bench", "tiny.onnx"])
    assert "--identity-file" in caught.value.fix
    assert client.count() == 1


def test_closed_port_is_one_line_and_exit_2_through_the_cli(client, models):
    port = _free_port()
    proc = run_cli("bench", str(models[0]), "--target", f"ssh://{USER}@127.0.0.1:{port}", "--runs", "5")
    assert_one_line_error(proc, f"connection refused by 127.0.0.1 port {port}", "ssh server")
    assert client.count() == 2  # one more try after a refused connection, no more


def test_python_without_onnxruntime(client, models, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=str(bare / "bin" / "python")))
    with pytest.raises(UserError) as caught:
        target.run(files=[models[0]], args=["bench", "tiny.onnx", "--runs", "5"])
    line = caught.value.one_line()
    assert f"on ssh://{ALIAS}:" in line and "cannot import" in line and "onnxruntime" in line, line
    assert client.count() == 3  # the runner failed: never retried


def test_runner_error_is_not_retried_and_the_folder_goes(client, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    workdir = tmp_path / "work"
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=sys.executable, workdir=str(workdir)))
    with pytest.raises(UserError, match="ONNX Runtime cannot load"):
        target.run(files=[broken], args=["bench", broken.name])
    assert list(workdir.iterdir()) == []
    assert client.count() == 3


@pytest.mark.slow
def test_time_out_stops_the_remote_runner_and_removes_its_folder(client, models, tmp_path):
    workdir = tmp_path / "work"
    target = open_target(f"ssh://{ALIAS}", options=TargetOptions(python=sys.executable, workdir=str(workdir)))
    with pytest.raises(UserError, match="took longer than 3 s"):
        target.run(files=[models[0]], args=["bench", "tiny.onnx", "--duration", "60"], timeout_s=3)
    assert list(workdir.iterdir()) == []
    deadline = time.monotonic() + 5
    while _processes_in(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_in(workdir) == []


def _processes_in(folder: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(folder)):
                found.append(proc.name)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("name, fragment", [
    ("ssh://", "is not ssh://[user@]host[:port]"),
    ("ssh://pi@", "is not ssh://[user@]host[:port]"),
    ("ssh://pi@board:", "is not ssh://[user@]host[:port]"),
    ("ssh://pi@board:99999", "outside 1-65535"),
    ("ssh://pi@board/models", "is not ssh://[user@]host[:port]"),
    ("ssh://-oProxyCommand=touch PWNED", "is not ssh://[user@]host[:port]"),
    ("ssh://pi@-oProxyCommand=x", "is not ssh://[user@]host[:port]"),
    ("ssh://pi@board;ls", "is not ssh://[user@]host[:port]"),
])
def test_malformed_names(name, fragment):
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as caught:
        open_target(name)
    assert "ssh://pi@" in caught.value.fix or "port" in caught.value.fix


@pytest.mark.parametrize("name, normalised", [
    ("ssh://board", "ssh://board"), ("ssh://pi@board.local", "ssh://pi@board.local"),
    ("ssh://pi@10.0.0.2:0022", "ssh://pi@10.0.0.2:22"), ("ssh://pi@[::1]:2222", "ssh://pi@[::1]:2222"),
])
def test_names_are_normalised(name, normalised):
    target = open_target(name)
    assert target.name == normalised and target.emulated is False and target.python == "python3"


def test_missing_identity_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="identity file .* does not exist"):
        open_target("ssh://pi@board", options=TargetOptions(identity_file=tmp_path / "nope"))


def _bench_process(model: Path, target: str, *extra: str) -> subprocess.Popen:
    """`edgepress bench` in a fresh interpreter, left running so that its device can die under it."""
    env = {key: value for key, value in os.environ.items() if key != "EDGEPRESS_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "edgepress", "bench", str(model), "--target", target,
                             "--warmup", "5", "--python", sys.executable, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _pid_in(workdir: Path) -> int | None:
    for pid_file in workdir.glob(f"*/{PID_FILE}"):
        text = pid_file.read_text().strip()
        if text.isdigit():
            return int(text)
    return None


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("victim, fragments", [
    ("runner", [f"the runner on ssh://{ALIAS} stopped after", "killed on the device"]),
    # sshd's process for the session: the connection breaks while the runner still runs on the device
    ("session", [f"the connection to ssh://{ALIAS} was lost after", "closed by remote host"]),
])
@pytest.mark.slow
def test_a_device_dying_mid_bench_keeps_the_runs_measured(client, models, tmp_path, victim, fragments):
    workdir, out = tmp_path / "work", tmp_path / "bench.json"
    bench = _bench_process(models[0], f"ssh://{ALIAS}", "--duration", "300", "--workdir", str(workdir),
                           "--json", str(out))
    try:
        pid = wait_for(lambda: _pid_in(workdir), what="runner pid file on the device", owner=bench)
        session = _parent_of(pid)
        kill_once_timing(pid, owner=bench, victim=pid if victim == "runner" else session)
        stdout, stderr = bench.communicate(timeout=120)
    finally:
        bench.kill()
    proc = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert_one_line_error(proc, *fragments, "timed runs", str(out), '"complete": false')
    assert [line for line in stderr.splitlines() if not line.startswith("edgepress: timing")] == \
        [line for line in stderr.splitlines() if line.startswith("edgepress: error:")], stderr
    result = json.loads(out.read_text())
    assert json.loads(stdout) == result
    assert result["complete"] is False and result["runs"] > 0
    assert result["incomplete"]["runs_measured"] == result["runs"]
    assert f"after {result['runs']} timed runs" in stderr
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    low, high = result["p50_ci95_ms"]
    assert low <= lat["p50"] <= high
    assert result["target"] == f"ssh://{ALIAS}" and result["model"] == "tiny.onnx"
    # the working folder goes, and a runner cut off from its host is stopped, not left timing for 300 s
    assert list(workdir.iterdir()) == []
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


@pytest.mark.slow
def test_a_device_dying_in_a_recipe_keeps_earlier_stages_and_the_other_targets(client, tmp_path):
    """The second target's runner is killed while it times the first ONNX stage (export): the run fails in one
    line, the stage folders before it stay, and the primary target's numbers and the dead target's timed runs
    of that stage are kept beside the stage folder."""
    workdir, out = tmp_path / "work", tmp_path / "out"
    targets = (f'[[targets]]\nname = "local"\nlatency = false\n'
               f'[[targets]]\nname = "ssh://{ALIAS}"\npython = "{sys.executable}"\nworkdir = "{workdir}"\n')
    # a wider model and the most runs the recipe allows: far more timing than the kill lets happen
    text = (TINY_RECIPE.format(epochs=1, budgets="").replace("runs = 200", "runs = 100000")
            .replace("width = 8", "width = 256") + targets)
    recipe = write_recipe(tmp_path, text=text)
    env = {key: value for key, value in os.environ.items() if key != "EDGEPRESS_DEBUG"}
    run = subprocess.Popen([sys.executable, "-m", "edgepress", "run", str(recipe), "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # the probe before any stage runs no bench; the runner timing the export stage does
        pid = wait_for(lambda: (out / "01-train").is_dir() and _pid_in(workdir), what="bench runner on the device",
                       owner=run, deadline_s=300)
        kill_once_timing(pid, owner=run)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    kept = out / f"02-export{INCOMPLETE_TARGETS}"
    proc = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    assert_one_line_error(proc, "stage 'export'", f"the runner on ssh://{ALIAS} stopped after", "timed runs",
                          str(kept))
    assert (out / "00-model").is_dir() and (out / "01-train" / "stage.json").is_file()
    assert not (out / "02-export").exists() and not (out / "report.json").exists()
    saved = json.loads(kept.read_text())
    assert saved["stage"] == "export" and saved["complete"] is False
    primary, dead = saved["targets"]["local"], saved["targets"][f"ssh://{ALIAS}"]
    assert 0.0 <= primary["accuracy"] <= 1.0 and "latency_ms" not in primary  # the host's, as a full run has
    assert dead["complete"] is False and dead["runs"] > 0 and len(dead["samples_ms"]) == dead["runs"]
    assert dead["latency_ms"]["min"] <= dead["latency_ms"]["p50"] <= dead["latency_ms"]["max"]
    assert "stopped after" in dead["error"] and dead["incomplete"]["runs_measured"] == dead["runs"]
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_a_device_evaluates_the_ort_of_a_recipe_against_its_source_there(client, tmp_path):
    """export, ptq, ort_format on a device over ssh that evaluates ptq and the .ort: the .ort answers as its source
    INT8 model answers there, and the device's folder is removed."""
    import edgepress
    from tests.conftest import ORT_TINY_RECIPE

    workdir = tmp_path / "work"
    workdir.mkdir()
    device = (f'\n[[targets]]\nname = "ssh://{ALIAS}"\npython = "{sys.executable}"\nworkdir = "{workdir}"\n'
              'evaluate = true\nevaluate_samples = 64\nlatency = false\nstages = ["ptq", "ort_format"]\n')
    ran = edgepress.run(write_recipe(tmp_path, text=ORT_TINY_RECIPE + device), out=tmp_path / "out")
    assert ran.gate.passed, ran.gate.violations
    on_device = ran.stage_named("ort_format").metrics.targets[f"ssh://{ALIAS}"]
    assert on_device.values["same_as_source"] == 1.0
    assert on_device.evaluation["digits:test"].samples == 64
    assert on_device.values["accuracy"] == ran.stage_named("ptq").metrics.targets[f"ssh://{ALIAS}"].values["accuracy"]
    assert list(workdir.iterdir()) == []

"""The code sandbox: adversarial programs stay contained, leave nothing running and leave the host untouched."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gopd_lightning.rewards import sandbox
from gopd_lightning.rewards.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    _filesystem_plan,
    check_sandbox,
    run_python,
)

UID = sandbox.BASE_UID  # the first free slot: this file's runs are the host's only ones
SANDBOX_UIDS = range(sandbox.BASE_UID, sandbox.BASE_UID + sandbox.MAX_SLOTS)
QUICK = SandboxLimits(wall_time_s=3.0, cpu_time_s=2)
REPO = Path(__file__).resolve().parents[1]


def _backend() -> str | None:
    return sandbox._namespace_probe()[0]


needs_root_backend = pytest.mark.skipif(
    os.geteuid() != 0, reason="containment tests find sandbox processes by their uids (root backend)"
)


def sandbox_processes(uids: range = SANDBOX_UIDS) -> list[int]:
    """Pids of host processes whose real uid is a sandbox uid."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # exited meanwhile
            continue
        if int(status.split("Uid:")[1].split()[0]) in uids:
            pids.append(int(pid))
    return pids


@pytest.fixture(autouse=True)
def isolation(request: pytest.FixtureRequest) -> Iterator[None]:
    """Namespace tests fail where the sandbox cannot be built (skip if GOPD_SANDBOX=weak says it cannot);
    no test may leave a process of a sandbox uid behind."""
    if "weak_host" not in request.fixturenames:
        if _backend() is None and os.environ.get(sandbox.WEAK_ENV) == "weak":
            pytest.skip(f"{sandbox.WEAK_ENV}=weak and no namespace sandbox here: {sandbox._namespace_probe()[1]}")
        if _backend() is None:
            pytest.fail(f"the sandbox fails here ({sandbox._namespace_probe()[1]}); {sandbox.WEAK_ENV}=weak skips this")
        if _backend() == "root":
            assert sandbox_processes() == []
    yield
    if _backend() == "root":
        assert sandbox_processes() == [], "a sandboxed process outlived run_python"


@pytest.fixture
def open_host_dir() -> Iterator[Path]:
    """A world-writable host directory that the sandbox can see (pytest's tmp_path is under /tmp: hidden)."""
    parent = REPO / ".pytest_cache"
    parent.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="sandbox-open-", dir=parent))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def run(source: str, stdin: str = "", limits: SandboxLimits = QUICK) -> sandbox.SandboxResult:
    return run_python(source, stdin=stdin, limits=limits)


def peak_processes_during(action: Callable[[], sandbox.SandboxResult]) -> tuple[sandbox.SandboxResult, int]:
    """Run ``action`` while sampling how many sandbox processes there are; returns its result and the peak."""
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], len(sandbox_processes()))
            time.sleep(0.01)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        result = action()
    finally:
        done.set()
        watcher.join()
    return result, peak[0]


def test_round_trip_as_unprivileged_user() -> None:
    source = (
        "import os, sys\n"
        "print(input()[::-1], os.getuid(), os.getgid(), os.getcwd(), sys.executable)\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "print(sorted(int(pid) for pid in os.listdir('/proc') if pid.isdigit()))\n"
    )
    result = run(source, stdin="olleh\n")
    assert result.returncode == 0 and not result.timed_out and result.stderr == ""
    first, capabilities, pids = result.stdout.splitlines()
    assert first == f"hello {UID} {UID} {sandbox.WORKDIR} {sys.executable}"
    assert int(capabilities, 16) == 0
    assert pids == "[1, 2]", "the program sees only its own pid namespace (init and itself)"


def test_exit_codes_and_stderr() -> None:
    assert run("import sys; print('partial'); sys.exit(3)").returncode == 3
    crashed = run("raise ValueError('boom')")
    assert crashed.returncode == 1 and "ValueError: boom" in crashed.stderr
    killed = run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == 128 + signal.SIGKILL and not killed.timed_out


def test_output_is_bounded() -> None:
    result = run("import sys\nsys.stdout.write('x' * (3 << 20))\nprint('tail', file=sys.stderr)", limits=QUICK)
    small = run("import sys\nsys.stdout.write('x' * (3 << 20))", limits=SandboxLimits(output_mb=1))
    assert result.stdout == "x" * (3 << 20) and not result.truncated and result.stderr == "tail\n"
    assert small.returncode == 0 and small.truncated and small.stdout == "x" * (1 << 20)


def test_infinite_loop_is_killed_by_the_cpu_limit() -> None:
    started = time.monotonic()
    result = run("while True: pass", limits=SandboxLimits(wall_time_s=10, cpu_time_s=1))
    assert result.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL) and not result.timed_out
    assert time.monotonic() - started < 5


def test_sleep_is_killed_by_the_wall_clock() -> None:
    started = time.monotonic()
    result = run("import time; print('sleeping', flush=True); time.sleep(1000)", limits=SandboxLimits(wall_time_s=1))
    assert result.timed_out and result.returncode is None and result.stdout == "sleeping\n"
    assert time.monotonic() - started < 1 + sandbox.KILL_GRACE_S


def test_huge_allocations_fail_inside() -> None:
    source = "x = bytearray(64 << 20)\nprint('64 MiB ok', flush=True)\ny = bytearray(512 << 20)\nprint('512 MiB')"
    capped = run(source, limits=SandboxLimits(memory_mb=256))
    assert capped.returncode == 1 and capped.stdout == "64 MiB ok\n" and "MemoryError" in capped.stderr
    huge = run("x = bytearray(64 << 30)")
    assert huge.returncode == 1 and "MemoryError" in huge.stderr


@needs_root_backend
def test_fork_bomb_is_capped_and_reaped() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    limits = SandboxLimits(wall_time_s=2, processes=16)
    result, peak = peak_processes_during(lambda: run(bomb, limits=limits))
    assert result.timed_out
    assert 2 <= peak <= limits.processes


def test_no_network() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        port = server.getsockname()[1]
        source = (
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('localhost', {port})]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=1)\n"
            "        print('connected', address)\n"
            "    except OSError as error:\n"
            "        print('refused', error.errno)\n"
        )
        result = run(source)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.returncode == 0 and "connected" not in result.stdout
    assert result.stdout.count("refused") == 3


def test_writes_outside_the_sandbox_fail_and_tmp_does_not_persist(open_host_dir: Path) -> None:
    marker = f"gopd-sandbox-test-{os.getpid()}"
    outside = [open_host_dir / "x", REPO / marker, *(Path(root) / marker for root in ("/etc", "/root", "/work"))]
    inside = [Path("/tmp") / marker, Path("/dev/shm") / marker, Path("/var/tmp") / marker, Path("relative")]
    source = (
        "import sys\n"
        "for path in sys.stdin.read().split():\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('refused', path, error.strerror)\n"
    )
    result = run(source, stdin="\n".join(map(str, outside + inside)))
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["refused"] * 5 + ["wrote"] * 4
    assert not any(path.exists() for path in outside + inside[:3])
    assert list(open_host_dir.iterdir()) == []


def test_host_tmp_is_invisible() -> None:
    secret = Path("/tmp") / f"gopd-sandbox-secret-{os.getpid()}"
    secret.write_text("host")
    try:
        result = run(f"import os; print(os.path.exists({str(secret)!r}), sorted(os.listdir('/tmp')))")
    finally:
        secret.unlink()
    # only the program's run directory, and the way to the interpreter when it lives under /tmp
    binds = _filesystem_plan()[0]
    exposed = {Path(path).relative_to("/tmp").parts[0] for path in binds if path.startswith("/tmp/")}
    assert result.stdout.strip() == f"False {sorted({'run'} | exposed)}"


DAEMON = """
import os, sys, time
heartbeat_dir = sys.stdin.read().strip()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            open('/tmp/beat', 'a').write('.')
            try:
                open(os.path.join(heartbeat_dir, 'beat'), 'a').write('.')
            except OSError:
                pass
            time.sleep(0.02)
    os._exit(0)
while not os.path.exists('/tmp/beat'):
    time.sleep(0.01)
time.sleep(0.3)
print('daemon beats', len(open('/tmp/beat').read()), flush=True)
"""


@needs_root_backend
@pytest.mark.parametrize("ending", ["exit", "timeout"])
def test_daemon_dies_with_the_program(open_host_dir: Path, ending: str) -> None:
    source = DAEMON + ("time.sleep(1000)\n" if ending == "timeout" else "")
    result, peak = peak_processes_during(lambda: run(source, stdin=str(open_host_dir)))
    assert result.timed_out == (ending == "timeout")
    assert int(result.stdout.split()[-1]) >= 5, "the daemon was running"
    assert peak >= 2, "the daemon was visible from the host while the program ran"
    assert sandbox_processes() == [], "nothing of the run survives it, the setsid daemon included"
    time.sleep(0.2)
    assert list(open_host_dir.iterdir()) == [], "the host directory never got a heartbeat"


def test_privileges_cannot_be_regained() -> None:
    source = (
        "import os\n"
        "for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: open('/etc/shadow').read()):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('escalated')\n"
        "    except OSError:\n"
        "        print('refused')\n"
        "print(os.getuid(), os.geteuid())\n"
    )
    result = run(source)
    assert result.stdout.splitlines() == ["refused"] * 3 + [f"{UID} {UID}"]


def test_spawn_overhead_is_small() -> None:
    run("pass")
    started = time.monotonic()
    for _ in range(5):
        assert run("pass").returncode == 0
    assert (time.monotonic() - started) / 5 < 0.5


# ------------------------------------------------------------------------------ no namespaces: weak mode


@pytest.fixture
def weak_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A host where the capability probe finds neither root nor user namespaces."""
    monkeypatch.setattr(sandbox, "_probe_host", lambda: [])
    monkeypatch.delenv(sandbox.WEAK_ENV, raising=False)
    sandbox._namespace_probe.cache_clear()
    sandbox._warn_weak_once.cache_clear()
    yield
    sandbox._namespace_probe.cache_clear()
    sandbox._warn_weak_once.cache_clear()


def test_unavailable_sandbox_is_refused_with_a_fix(weak_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SandboxUnavailable) as refusal:
        check_sandbox()
    message = str(refusal.value)
    for hint in ("root", "user namespaces", "allow_weak=True", "GOPD_SANDBOX=weak"):
        assert hint in message
    with pytest.raises(SandboxUnavailable):
        run_python("print('should not run')")
    monkeypatch.setenv(sandbox.WEAK_ENV, "yes")
    with pytest.raises(SandboxUnavailable):
        check_sandbox()


def test_weak_mode_only_when_allowed(weak_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(RuntimeWarning, match="WEAK mode"):
        assert check_sandbox(allow_weak=True) == "weak"
    monkeypatch.setenv(sandbox.WEAK_ENV, "weak")
    assert check_sandbox() == "weak"
    result = run_python("import os; print(input(), os.getuid())", stdin="hi")
    assert result.returncode == 0 and result.stdout == f"hi {os.getuid()}\n"


@pytest.mark.filterwarnings("ignore:code sandbox in WEAK mode")
def test_weak_mode_kills_the_process_group(weak_host: None, tmp_path: Path) -> None:
    workdirs = set(Path(tempfile.gettempdir()).glob("gopd-sandbox-*"))
    heartbeat = tmp_path / "beat"
    source = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    while True:\n"
        f"        open({str(heartbeat)!r}, 'a').write('.')\n"
        "        time.sleep(0.02)\n"
        "time.sleep(1000)\n"
    )
    result = run_python(source, limits=SandboxLimits(wall_time_s=1), allow_weak=True)
    assert result.timed_out
    beats = heartbeat.read_text()
    time.sleep(0.3)
    assert len(beats) > 5 and heartbeat.read_text() == beats, "the child stopped with the program"
    assert set(Path(tempfile.gettempdir()).glob("gopd-sandbox-*")) == workdirs, "the work directory is removed"


# ------------------------------------------------------------------ whole-run limits and a minimal root


@needs_root_backend
def test_memory_is_capped_for_the_whole_run_not_per_process() -> None:
    children = (
        "import os, time\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        block = bytearray(200 << 20)\n"
        "        block[::4096] = b'x' * len(block[::4096])\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "for _ in range(4):\n"
        "    os.wait()\n"
        "print('all children done')\n"
    )
    limits = SandboxLimits(wall_time_s=8, memory_mb=1024, total_memory_mb=500)
    started = time.monotonic()
    result = run(children, limits=limits)
    assert result.memory_exceeded and result.returncode == 128 + signal.SIGKILL, result
    assert "all children done" not in result.stdout and time.monotonic() - started < 4
    alone = run(children.replace("range(4)", "range(1)"), limits=dataclasses.replace(limits, wall_time_s=10))
    assert not alone.memory_exceeded and alone.stdout == "all children done\n"


@needs_root_backend
def test_concurrent_runs_have_their_own_uid_and_process_budget() -> None:
    """A neighbour holding most of its process budget does not make another run's forks fail."""
    greedy = (
        "import os, time\nprint(os.getuid(), flush=True)\n"
        + "".join("if os.fork() == 0:\n    time.sleep(1.5)\n    os._exit(0)\n" for _ in range(12))
        + "time.sleep(1.5)\n"
    )
    modest = (
        "import os, time\ntime.sleep(0.5)\nchildren = []\nfor _ in range(6):\n    child = os.fork()\n"
        "    if child == 0:\n        time.sleep(0.5)\n        os._exit(0)\n    children.append(child)\n"
        "print(os.getuid(), 'forked', len(children))\n"
    )
    limits = SandboxLimits(wall_time_s=5, processes=16)
    results: dict[str, sandbox.SandboxResult] = {}
    threads = [
        threading.Thread(target=lambda name=name, source=source: results.__setitem__(name, run(source, limits=limits)))
        for name, source in (("greedy", greedy), ("modest", modest))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    greedy_uid = int(results["greedy"].stdout.split()[0])
    modest_uid, verdict = results["modest"].stdout.split(maxsplit=1)
    assert results["modest"].returncode == 0 and verdict.strip() == "forked 6", results["modest"]
    assert greedy_uid != int(modest_uid) and {greedy_uid, int(modest_uid)} <= set(SANDBOX_UIDS)


def test_host_unix_sockets_are_unreachable(open_host_dir: Path) -> None:
    path = open_host_dir / "host.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen()
        server.settimeout(0.2)
        probe = (
            "import socket, sys\n"
            "for address in sys.stdin.read().split():\n"
            "    try:\n"
            "        socket.socket(socket.AF_UNIX).connect(address)\n"
            "        print('connected')\n"
            "    except OSError as error:\n"
            "        print('refused', error.strerror)\n"
        )
        result = run(probe, stdin=f"{path}\n/run/systemd/private\n/var/run/docker.sock\n")
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.returncode == 0 and result.stdout.count("refused") == 3, result


def test_only_what_the_interpreter_needs_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gopd-sandbox-path-", dir="/tmp"))
    (folder / "package").mkdir()
    (folder / "secret.txt").write_text("host secret")
    monkeypatch.setattr(sys, "path", [*sys.path, str(folder / "package")])
    sandbox._filesystem_plan.cache_clear()
    try:
        paths = (str(folder), str(REPO / "pyproject.toml"))
        probe = f"import os; print(*(os.path.exists(p) for p in {paths!r}), sorted(os.listdir('/')))"
        result = run(probe)
    finally:
        sandbox._filesystem_plan.cache_clear()
        shutil.rmtree(folder)
    seen, repo_seen, top = result.stdout.split(maxsplit=2)
    assert (seen, repo_seen) == ("False", "False"), "a sys.path folder under /tmp and the checkout stay hidden"
    assert "home" not in top and "mnt" not in top and "srv" not in top


class StopAfter:
    """A watcher that stops the run after ``lines`` lines, or lets it time out after ``patience_s`` of silence."""

    def __init__(self, lines: int, patience_s: float = 30.0) -> None:
        self.lines, self.patience_s, self.seen = lines, patience_s, b""
        self._deadline = time.monotonic() + patience_s

    def deadline(self) -> float:
        return self._deadline

    def feed(self, data: bytes) -> bool:
        self.seen += data
        self._deadline = time.monotonic() + self.patience_s
        return self.seen.count(b"\n") < self.lines


def test_a_watcher_stops_the_run_early_or_times_it_out_when_it_falls_silent() -> None:
    chatty = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.01)\n"
    started = time.monotonic()
    stopped = run_python(chatty, limits=SandboxLimits(wall_time_s=10), watcher=StopAfter(lines=3))
    assert stopped.stopped and not stopped.timed_out and time.monotonic() - started < 1 + sandbox.KILL_GRACE_S
    assert stopped.stdout.startswith("tick\ntick\ntick\n")
    silent = "print('hello', flush=True)\nimport time\ntime.sleep(60)\n"
    started = time.monotonic()
    waited = run_python(silent, limits=SandboxLimits(wall_time_s=10), watcher=StopAfter(lines=99, patience_s=0.5))
    assert waited.timed_out and not waited.stopped and time.monotonic() - started < 1 + sandbox.KILL_GRACE_S


def test_a_run_that_ends_just_as_it_is_stopped_is_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Popen.send_signal`` polls (and so reaps) a warden that ended between the check and the signal:
    the run must still be collected, not fail with ChildProcessError (seen under GRPO on code)."""
    send_signal = subprocess.Popen.send_signal

    def late_signal(process: subprocess.Popen, signum: int) -> None:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # the program ends before the signal
        send_signal(process, signum)

    monkeypatch.setattr(subprocess.Popen, "send_signal", late_signal)
    quick = "print('tick', flush=True)\n"
    result = run_python(quick, limits=SandboxLimits(wall_time_s=10), watcher=StopAfter(lines=1))
    assert result.stopped and result.stdout == "tick\n"

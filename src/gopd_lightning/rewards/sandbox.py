"""Run untrusted Python programs (model-written code) in a throwaway Linux sandbox.

In-process guards can be undone by the code they guard, so every program runs in its own processes:

* a *warden* (``python -c`` with the sandbox half of this file; stdlib only, so it starts in ~10 ms) unshares
  network, pid and mount namespaces and forks the namespace's *init*, which builds a fresh root: a tmpfs holding
  read-only, nosuid bind mounts of only what the interpreter needs (its executable, standard library,
  site-packages and shared libraries), a few character devices, size-capped tmpfs at ``/tmp``, ``/var/tmp`` and
  ``/dev/shm``, and a fresh ``/proc``; nothing else of the host (data, home directories, sockets) exists there;
* init forks the program, which drops to the run's own unprivileged uid (``BASE_UID + slot``, a slot held
  host-wide for the run, so concurrent runs never share a process budget; under an unprivileged user namespace it
  becomes that uid in a nested namespace), sets rlimits and execs ``sys.executable``;
* init watches the resident memory of the whole namespace and kills every process in it past
  ``SandboxLimits.total_memory_mb``; it exits when the program does, and the kernel then kills everything left in
  the pid namespace (daemons included); on timeout the warden kills init. The warden exits only after init is
  reaped, i.e. after the whole namespace is gone, so nothing outlives :func:`run_python`.

A :class:`Watcher` may follow the program's stdout as it comes, move the deadline and stop the run early.

Hosts with neither root nor user namespaces get :class:`SandboxUnavailable`, unless weak mode (rlimits, timeout
and process-group kill only, same uid as the caller, no isolation) is explicitly allowed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import marshal
import os
import selectors
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NoReturn, Protocol

BASE_UID = 60000
WEAK_ENV = "GOPD_SANDBOX"
WORKDIR = "/tmp/run"
SANDBOX_SIDE = "# ==== sandbox side"
# the warden's imports; ``signal`` and ``json`` would pull in enum and re: +10 ms on every run
WARDEN_PRELUDE = "from __future__ import annotations\nimport _signal as signal, marshal, os, sys\n"
MAX_SLOTS = 4096
LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
HOST_FILES = ("/etc/ld.so.cache", "/etc/localtime")
KILL_GRACE_S = 2.0
POLL_S = 0.05
READ_CHUNK = 1 << 16


class SandboxUnavailable(RuntimeError):
    """The host cannot build the sandbox (and weak mode was not allowed), or building it failed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run: wall time and ``total_memory_mb`` for the whole run, the rest per process."""

    wall_time_s: float = 10.0
    cpu_time_s: int = 10
    memory_mb: int = 4096  # address space (RLIMIT_AS); EvalPlus allows 4 GiB, Mbpp/255 needs over 1
    total_memory_mb: int = 4096  # resident memory of all the run's processes together; not applied in weak mode
    processes: int = 32  # RLIMIT_NPROC of the run's own uid, i.e. of the whole run (threads count); not in weak mode
    file_size_mb: int = 16
    open_files: int = 64
    output_mb: int = 4  # stdout and stderr are each truncated to this
    tmpfs_mb: int = 64  # size of each private tmpfs (/tmp, /var/tmp, /dev/shm)


@dataclass
class SandboxResult:
    """What a program did. ``returncode`` follows the shell: 128 + N when killed by signal N; None on timeout."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool = False  # stdout or stderr exceeded ``SandboxLimits.output_mb``
    wall_time_s: float = 0.0
    memory_exceeded: bool = False  # killed for passing ``SandboxLimits.total_memory_mb``
    stopped: bool = False  # stopped early by its :class:`Watcher`


class Watcher(Protocol):
    """Follows a program's stdout while it runs: a judge that knows the verdict before the program ends."""

    def deadline(self) -> float:
        """``time.monotonic()`` by which the program must have made progress (else it is killed as timed out)."""

    def feed(self, data: bytes) -> bool:
        """Take the next stdout bytes; False stops the run now (its verdict is known)."""


def run_python(
    source: str,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    allow_weak: bool = False,
    watcher: Watcher | None = None,
) -> SandboxResult:
    """Run ``source`` with ``sys.executable`` in the sandbox; never raises on anything the program does.

    ``limits.wall_time_s`` bounds the whole run; a ``watcher`` may stop it sooner. Raises
    :class:`SandboxUnavailable` only for host problems.
    """
    backend = _backend(allow_weak)
    return _execute(backend, source, stdin, limits or SandboxLimits(), watcher)


def check_sandbox(allow_weak: bool = False) -> str:
    """The isolation in use: ``"namespaces"``, or ``"weak"`` when the host has none and weak mode is allowed.

    Weak mode is allowed by ``allow_weak=True`` or the environment variable ``GOPD_SANDBOX=weak``; otherwise a
    host without namespaces raises :class:`SandboxUnavailable` saying how to fix it.
    """
    return "weak" if _backend(allow_weak) == "weak" else "namespaces"


# ----------------------------------------------------------------------------------------------- host side

_probe_lock = threading.Lock()


def _backend(allow_weak: bool) -> str:
    """``"root"`` or ``"userns"`` (how the namespaces are built), or ``"weak"``."""
    with _probe_lock:  # one probe, however many threads ask at once
        backend, reason = _namespace_probe()
    if backend is not None:
        return backend
    if allow_weak or os.environ.get(WEAK_ENV) == "weak":
        _warn_weak_once(reason)
        return "weak"
    raise SandboxUnavailable(
        f"cannot isolate untrusted code on this host: {reason}. The sandbox needs root (to create namespaces and "
        "switch to an unprivileged uid) or unprivileged user namespaces (sysctls user.max_user_namespaces > 0, "
        "kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0; in a container: "
        "--privileged or CAP_SYS_ADMIN without a seccomp ban on unshare). To run model code WITHOUT isolation "
        f"(rlimits and a timeout only), pass allow_weak=True or set {WEAK_ENV}=weak."
    )


@functools.cache
def _warn_weak_once(reason: str) -> None:
    warnings.warn(
        f"code sandbox in WEAK mode ({reason}): programs run as this user with rlimits and a timeout only",
        RuntimeWarning,
        stacklevel=4,
    )


def _probe_host() -> list[str]:
    """Namespace backends this host may support, best first (confirmed by a real run in :func:`_namespace_probe`)."""
    candidates = ["root"] if os.geteuid() == 0 else []
    return candidates + (["userns"] if _user_namespaces_enabled() else [])


def _user_namespaces_enabled() -> bool:
    """Whether the sysctls allow unprivileged user namespaces (AppArmor may still refuse; the probe run tells)."""
    sysctls = {"/proc/sys/user/max_user_namespaces": 1, "/proc/sys/kernel/unprivileged_userns_clone": 1}
    for path, minimum in sysctls.items():
        try:
            with open(path) as handle:
                if int(handle.read()) < minimum:
                    return False
        except FileNotFoundError:
            continue
    return True


@functools.cache
def _namespace_probe() -> tuple[str | None, str]:
    """The first backend whose trial run works, or None and why none did. Cached for the process."""
    reasons = []
    for backend in _probe_host():
        try:
            result = _execute(backend, "import os; print(os.getuid())", "", SandboxLimits(), None)
        except SandboxUnavailable as error:
            reasons.append(f"{backend}: {error}")
            continue
        if result.returncode == 0 and result.stdout.strip().isdigit() and int(result.stdout) >= BASE_UID:
            return backend, ""
        reasons.append(f"{backend}: trial run failed ({result.returncode=}, {result.stderr[-500:]!r})")
    return None, "; ".join(reasons) or "not root and user namespaces are disabled"


def _execute(backend: str, source: str, stdin: str, limits: SandboxLimits, watcher: Watcher | None) -> SandboxResult:
    """Start the warden for one program in a slot of its own, feed it, collect bounded output, stop it in time."""
    weak = backend == "weak"
    with contextlib.ExitStack() as stack:
        slot = 0 if weak else stack.enter_context(_run_slot())
        workdir = WORKDIR
        if weak:
            workdir = stack.enter_context(tempfile.TemporaryDirectory("", "gopd-sandbox-", None, True))
        source_file, stdin_file = (stack.enter_context(tempfile.TemporaryFile()) for _ in range(2))
        for handle, text in ((source_file, source), (stdin_file, stdin)):
            handle.write(text.encode("utf-8", errors="surrogatepass"))  # any str: never raises
            handle.seek(0)
        binds, links = _filesystem_plan()
        status_read, status_write = os.pipe()
        config = {
            "backend": backend,
            "uid": BASE_UID + slot,
            "limits": asdict(limits),
            "workdir": workdir,
            "source_fd": source_file.fileno(),
            "status_fd": status_write,
            "binds": binds,
            "links": links,
        }
        started = time.monotonic()
        try:
            warden = subprocess.Popen(
                [*_warden_command(), marshal.dumps(config).hex()],  # same interpreter on both ends
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(source_file.fileno(), status_write),
                env=_program_env(workdir),
                start_new_session=weak,
            )
        finally:
            os.close(status_write)
        outcome = _collect(warden, status_read, started + limits.wall_time_s, limits, weak, watcher)
    streams, timed_out, truncated, stopped = outcome
    status = streams["status"].decode(errors="replace")
    if status and not status.startswith(LIMIT_PREFIX):
        raise SandboxUnavailable(f"sandbox setup failed ({backend}): {status}")
    code = warden.returncode
    return SandboxResult(
        returncode=None if timed_out else (code if code >= 0 else 128 - code),
        stdout=streams["stdout"].decode(errors="replace"),
        stderr=streams["stderr"].decode(errors="replace"),
        timed_out=timed_out,
        truncated=truncated,
        wall_time_s=time.monotonic() - started,
        memory_exceeded=status == f"{LIMIT_PREFIX}memory",
        stopped=stopped,
    )


@contextlib.contextmanager
def _run_slot() -> Iterator[int]:
    """A slot no other run on this host holds (an flock, so a crashed holder frees it), held for the run."""
    directory = os.path.join(tempfile.gettempdir(), f"gopd-sandbox-slots-{os.geteuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for slot in range(MAX_SLOTS):
        fd = os.open(os.path.join(directory, str(slot)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield slot
        finally:
            os.close(fd)
        return
    raise SandboxUnavailable(f"all {MAX_SLOTS} sandbox slots of this host are busy")


def _collect(
    warden: subprocess.Popen,
    status_fd: int,
    wall_deadline: float,
    limits: SandboxLimits,
    weak: bool,
    watcher: Watcher | None,
) -> tuple[dict[str, bytearray], bool, bool, bool]:
    """Read stdout, stderr and the status pipe until the warden is done; stop it at the deadline or when told.

    Keeps at most ``limits.output_mb`` of each stream and drains the rest, so a chatty program never blocks.
    Returns the streams, whether a deadline hit, whether output was truncated, and whether the watcher stopped it.
    """
    assert warden.stdout is not None and warden.stderr is not None
    names = {warden.stdout.fileno(): "stdout", warden.stderr.fileno(): "stderr", status_fd: "status"}
    streams = {name: bytearray() for name in names.values()}
    bound, truncated, timed_out, stopped = limits.output_mb * MIB, False, False, False
    stops = [lambda: _stop(warden, weak, signal.SIGTERM), lambda: _stop(warden, weak, signal.SIGKILL)]
    kill_deadline = None  # once stopping: when to escalate to the next signal

    def deadline() -> float:
        if kill_deadline is not None:
            return kill_deadline
        return min(wall_deadline, watcher.deadline()) if watcher else wall_deadline

    with selectors.DefaultSelector() as selector:
        for fd in names:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() or _running(warden):
            now = time.monotonic()
            if now >= deadline() or (stopped and kill_deadline is None):
                if not stops:
                    break
                timed_out |= not stopped
                stops.pop(0)()
                kill_deadline = now + KILL_GRACE_S
            if weak and not _running(warden):
                _kill_group(warden)  # stragglers may hold the pipes open
            for key, _ in selector.select(max(min(deadline() - now, POLL_S), 0)):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = streams[names[key.fd]]
                room = max(bound - len(buffer), 0)
                buffer += chunk[:room]
                truncated |= len(chunk) > room
                if watcher and names[key.fd] == "stdout" and not stopped and kill_deadline is None:
                    stopped = not watcher.feed(chunk)  # all of it: the bound is for what is kept
    os.close(status_fd)
    warden.stdout.close()
    warden.stderr.close()
    if weak:
        _kill_group(warden)
    warden.wait()
    return streams, timed_out, truncated, stopped


def _stop(warden: subprocess.Popen, weak: bool, signum: int) -> None:
    """SIGTERM asks the warden to kill the namespace's init and wait for it; SIGKILL leaves that to PDEATHSIG."""
    if weak:
        _kill_group(warden)
    elif _running(warden):
        warden.send_signal(signum)


def _running(warden: subprocess.Popen) -> bool:
    """Whether the warden still runs, without reaping it: while it is an unreaped zombie its pid (the
    weak mode's process group id) cannot be reused, so killing that group never hits another process.

    ``Popen.send_signal`` polls first, so a warden that ended just before it was signalled is reaped there:
    it then counts as ended (asking the kernel about a reaped pid would raise, or name a stranger)."""
    if warden.returncode is not None:
        return False
    return os.waitid(os.P_PID, warden.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def _kill_group(warden: subprocess.Popen) -> None:
    """SIGKILL the weak mode's process group (the warden leads it); only before the warden is reaped."""
    if warden.returncode is not None:  # reaped: its pid may name another process group by now
        return
    try:
        os.killpg(warden.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@functools.cache
def _warden_command() -> list[str]:
    """``python -c`` with the sandbox side of this file: importing the whole module would triple its startup."""
    with open(__file__, encoding="utf-8") as handle:
        text = handle.read()
    code = WARDEN_PRELUDE + text[text.index("\n" + SANDBOX_SIDE) :]
    return [sys.executable, "-I", "-S", "-B", "-c", code]


@functools.cache
def _filesystem_plan() -> tuple[list[str], dict[str, str]]:
    """What the sandbox's root holds: real paths to bind read-only, and the symlinks leading to them.

    Only the interpreter's needs: its executable (and virtual environment), standard library, site-packages and
    the host's shared libraries. Not ``sys.path`` as such: its other entries (the working directory, an
    editable checkout under /tmp) would expose whole host folders.
    """
    wanted = [sys.executable, sys.prefix, *LIBRARY_DIRS, *HOST_FILES]
    wanted += [sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    wanted.append(sysconfig.get_config_var("LIBDIR") or "")
    binds: set[str] = set()
    links: dict[str, str] = {}
    for path in wanted:
        if path and os.path.lexists(path):
            _follow(os.path.abspath(path), binds, links)
    roots = sorted(binds)
    kept = [path for path in roots if not any(path.startswith(other.rstrip("/") + "/") for other in roots)]
    return kept, {link: target for link, target in links.items() if not any(link.startswith(k + "/") for k in kept)}


def _follow(path: str, binds: set[str], links: dict[str, str], depth: int = 0) -> None:
    """Record the symlinks on the way to ``path`` and the real path it ends at."""
    current = ""
    parts = path.strip("/").split("/")
    for index, part in enumerate(parts):
        current += "/" + part
        if os.path.islink(current) and depth < 40:
            target = os.readlink(current)
            links[current] = target
            rest = parts[index + 1 :]
            resolved = os.path.normpath(os.path.join(os.path.dirname(current), target, *rest))
            return _follow(resolved, binds, links, depth + 1)
    if os.path.exists(current):
        binds.add(current)


def _program_env(workdir: str) -> dict[str, str]:
    """A minimal environment: no host secrets, single-threaded math libraries (threads count as processes)."""
    single_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        **single_thread,
    }


# ==== sandbox side: the warden runs the rest of this file as ``python -c`` (see _warden_command)

TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEVICE_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "fd/0", "/dev/stdout": "fd/1", "/dev/stderr": "fd/2"}
STAGE = "/tmp"  # where init assembles the new root (sources under it are opened before it is covered)
SETUP_FAILED = 125
LIMIT_PREFIX = "limit: "
MEMORY_POLL_S = 0.02
MIB = 1 << 20
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 0x400, 0x800, 0x1000, 0x4000, 0x40000
MS_RELATIME, MS_STRICTATIME = 0x200000, 0x1000000
ST_RELATIME = 0x1000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def _warden_main(config: dict[str, Any]) -> NoReturn:
    """Enter fresh namespaces, fork init, and relay its exit code; SIGTERM kills init (and so the namespace)."""
    for fd in (config["source_fd"], config["status_fd"]):
        os.set_inheritable(fd, False)
    if config["backend"] == "weak":
        _start_program(config)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        _enter_namespaces(config)
        init = os.fork()
    except Exception as error:
        _fail(config, error)
    if init == 0:
        _init_main(config)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.close(config["status_fd"])
    os._exit(_exit_code(os.waitpid(init, 0)[1]))


def _init_main(config: dict[str, Any]) -> NoReturn:
    """Pid 1 of the sandbox: build the root, fork the program, reap everything, cap the namespace's memory."""
    try:
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _build_filesystem(config)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        program = os.fork()
    except Exception as error:
        _fail(config, error)
    if program == 0:
        _start_program(config)
    os.close(config["source_fd"])
    cap, exceeded = config["limits"]["total_memory_mb"] * MIB, False
    while True:
        signal.sigtimedwait({signal.SIGCHLD}, MEMORY_POLL_S)
        while True:  # orphans of the program are reparented here
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == program:
                os._exit(_exit_code(status))
            if pid == 0:
                break
        if not exceeded and _namespace_memory() > cap:
            exceeded = True
            os.write(config["status_fd"], f"{LIMIT_PREFIX}memory".encode())
            os.kill(-1, signal.SIGKILL)  # every process of the namespace but init


def _namespace_memory() -> int:
    """Bytes of anonymous and shared memory resident in the namespace's processes (file pages excluded)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as status:
                for line in status:
                    if line.startswith((b"RssAnon:", b"RssShmem:")):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def _start_program(config: dict[str, Any]) -> NoReturn:
    """Become the sandbox user, write the program into a fresh work directory, set rlimits and exec it."""
    try:
        if config["backend"] != "weak":
            _drop_privileges(config)
            os.mkdir(config["workdir"], 0o700)
        os.chdir(config["workdir"])
        with os.fdopen(config["source_fd"], "rb") as source, open("program.py", "wb") as program:
            program.write(source.read())
        _apply_limits(config)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        argv = [sys.executable, "-E", "-s", "-B", os.path.join(config["workdir"], "program.py")]
        os.execv(sys.executable, argv)
    except Exception as error:
        _fail(config, error)


def _fail(config: dict[str, Any], error: BaseException) -> NoReturn:
    """Report a setup failure on the status pipe (closed on exec, so only our own code can write it) and exit."""
    os.write(config["status_fd"], f"{type(error).__name__}: {error}".encode())
    os._exit(SETUP_FAILED)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _libc_call(name: str, *args: Any) -> None:
    """Call a libc function, raising OSError with its errno when it returns -1."""
    import ctypes  # imported here: only the warden needs it

    encoded = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    if getattr(ctypes.CDLL(None, use_errno=True), name)(*encoded) == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{tuple(args)}: {os.strerror(errno)}")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _enter_namespaces(config: dict[str, Any]) -> None:
    """New mount, pid and network namespaces; under ``userns`` also a user namespace where we are root."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET
    if config["backend"] == "root":
        _libc_call("unshare", flags)
        return
    uid, gid = os.geteuid(), os.getegid()
    _libc_call("unshare", flags | CLONE_NEWUSER)
    _map_ids(inside=0, outside_uid=uid, outside_gid=gid)


def _map_ids(inside: int, outside_uid: int, outside_gid: int) -> None:
    """Map one id of a freshly unshared user namespace onto our id outside it."""
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{inside} {outside_uid} 1")
    _write_file("/proc/self/gid_map", f"{inside} {outside_gid} 1")


def _build_filesystem(config: dict[str, Any]) -> None:
    """Assemble a fresh root on a tmpfs at ``STAGE`` from ``config["binds"]`` and ``["links"]``, then enter it."""
    _libc_call("mount", None, "/", None, MS_REC | MS_PRIVATE, None)
    sources = {path: os.open(path, os.O_PATH) for path in config["binds"]}  # before STAGE hides any of them
    _libc_call("mount", "tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    options = f"mode=1777,size={config['limits']['tmpfs_mb']}m"
    for directory in TMP_DIRS:  # first: an interpreter under /tmp is bound onto them
        _ensure(STAGE + directory, directory=True)
        _libc_call("mount", "tmpfs", STAGE + directory, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for path, fd in sources.items():
        _bind(f"/proc/self/fd/{fd}", STAGE + path, readonly=True)
        os.close(fd)
    for link, target in config["links"].items():
        _ensure(STAGE + os.path.dirname(link), directory=True)
        if not os.path.lexists(STAGE + link):
            os.symlink(target, STAGE + link)
    for device in DEVICES:
        if os.path.exists(device):
            _bind(device, STAGE + device, readonly=False)
    for link, target in DEVICE_LINKS.items():
        os.symlink(target, STAGE + link)
    _ensure(STAGE + "/proc", directory=True)
    _libc_call("mount", "proc", STAGE + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    _libc_call("mount", None, STAGE, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.chdir(STAGE)
    os.chroot(".")
    os.chdir("/")


def _ensure(path: str, directory: bool) -> None:
    """Create ``path`` (a directory, or an empty file to mount over) and its parents on the stage."""
    os.makedirs(path if directory else os.path.dirname(path), mode=0o755, exist_ok=True)
    if not directory and not os.path.lexists(path):
        open(path, "w").close()


def _bind(source: str, target: str, readonly: bool) -> None:
    """Bind-mount ``source`` at ``target``, read-only and nosuid when asked (keeping its locked flags)."""
    _ensure(target, directory=os.path.isdir(source))
    _libc_call("mount", source, target, None, MS_BIND | MS_REC, None)
    if readonly:
        _remount_readonly(target)


def _remount_readonly(mount_point: str) -> None:
    """Make one mount read-only and nosuid in this namespace only (a bind remount), keeping its other flags."""
    current = os.statvfs(mount_point).f_flag
    kept = current & (MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    atime = MS_RELATIME if current & ST_RELATIME else 0 if current & MS_NOATIME else MS_STRICTATIME
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | kept | atime
    _libc_call("mount", None, mount_point, None, flags, None)


def _drop_privileges(config: dict[str, Any]) -> None:
    """Become the slot's uid/gid with no capabilities and no way to regain privileges (setuid files, ...)."""
    uid = config["uid"]
    if config["backend"] == "root":
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    else:  # a nested user namespace where we are ``uid``; execve of a non-root uid then drops all capabilities
        _libc_call("unshare", CLONE_NEWUSER)
        _map_ids(inside=uid, outside_uid=0, outside_gid=0)
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _apply_limits(config: dict[str, Any]) -> None:
    import resource  # imported here: only the program's process needs it

    limits = config["limits"]
    caps = {
        resource.RLIMIT_AS: limits["memory_mb"] * MIB,
        resource.RLIMIT_FSIZE: limits["file_size_mb"] * MIB,
        resource.RLIMIT_NOFILE: limits["open_files"],
        resource.RLIMIT_CORE: 0,
    }
    if config["backend"] != "weak":  # RLIMIT_NPROC counts all processes of the uid: only the slot uid is ours
        caps[resource.RLIMIT_NPROC] = limits["processes"]
    for kind, cap in caps.items():
        resource.setrlimit(kind, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_time_s"], limits["cpu_time_s"] + 1))


if __name__ == "__main__":
    _warden_main(marshal.loads(bytes.fromhex(sys.argv[1])))

"""Run untrusted exercise code in a child process that cannot see or change what it is graded against.

Threat model: the code of a submission is hostile. It may patch any Python object, read or write any file
it can reach, start processes that outlive it, loop forever, allocate without bound or kill itself. It
runs only in a child forked by the fork server started here (``python -I -m mtml_lib.grading.sandbox``),
which reports plain data (JSON lines on a pipe) and nothing else; the grading process reads that data, never imports or
unpickles anything the child produced, and compares it with results it computed itself. Whatever the
child reports is treated as a claim to be checked, so a child that forges its report gains nothing
unless it knows the right answers.

What the child is kept from, when the grader runs as root on Linux (the setting this module is made for):

- **files**: a private mount namespace whose root is a fresh tmpfs holding read-only binds of the system
  folders (``/usr``, ``/etc``, the library folders), the Python installation, the virtual environment and
  the ``mtml_lib`` package, and nothing else: not the project checkout (instructor notebooks, ``.git``),
  not the submissions, not the grade book. Its working folder and ``/tmp`` live in that tmpfs (size
  limited) and vanish with it, so nothing it writes survives the run.
- **privileges**: it drops to a dedicated unprivileged user id (no groups, ``no_new_privs``), so it cannot
  undo the above and cannot signal or trace the grader.
- **network and IPC**: private network and System V IPC namespaces (no interfaces but a loopback that is
  down; no shared memory segments or message queues of other runs).
- **resources**: ``RLIMIT_AS`` (address space, default 2 GiB: torch and mtml_lib, loaded by the fork server
  before the answers run, map about 0.65 GiB), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``,
  ``RLIMIT_NOFILE`` and no core files, plus a wall-clock limit enforced by the grader.
- **lingering processes**: the child starts a new session; at the end the grader kills its process
  group and then every process of the dedicated user id (``kill(-1)`` from a helper with that id), which
  also catches processes that left the group with ``setsid``.

Without root (or where namespaces are unavailable) the child still gets a fresh temporary working
folder, the resource limits (but the process limit) and the process-group kill, but it runs as the
grader's own user and can read whatever that user can: the grader prints a warning saying so. Not defended against: kernel
exploits, and side channels of a shared machine (timing). The hidden probes are sent to the child
(they must run there), so a hostile submission can learn what they compute, but never their expected
results.

Protocol: the grader starts a fork server (:func:`serve`, trusted code that imports torch once and never
runs submitted code) and, for each run, sends it three file descriptors: a JSON *spec* (the cells to
run, the probes to evaluate, the limits), a pipe for the report and a log file. The server forks a child
that starts a new session, isolates itself and writes one JSON object per line to the pipe: first
``{"event": "sandbox", ...}`` (written before any submitted code runs), then ``{"event": "cell", ...}``
per cell and ``{"event": "probe", ...}`` per probe, then ``{"event": "done"}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38

MAX_STRING = 2000
MAX_ELEMENTS = 200_000


# ---------------------------------------------------------------------------------------- child side
class _Out:
    def __init__(self, fd: int):
        self.fd = fd

    def write(self, record: dict) -> None:
        data = (json.dumps(record, allow_nan=True) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else str(s).encode())
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _bind(libc, source: str, target: Path, created: list[Path]) -> None:
    """Bind ``source`` read-only at ``target`` (created, a folder or an empty file as the source is)."""
    if os.path.islink(source):
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() and not target.is_symlink():
            target.symlink_to(os.readlink(source))
        return
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    _mount(libc, source, target, None, MS_BIND | MS_REC)
    _mount(libc, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    created.append(target)


def _private_root(libc, binds: list[str], hide: list[str], uid: int, tmpfs_mib: int) -> None:
    """Mount namespace + new root on a tmpfs with read-only binds; ends in the new root at /work."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    staging = Path("/tmp")  # shadowed in this namespace only
    _mount(libc, "tmpfs", staging, "tmpfs", MS_NOSUID, f"size={tmpfs_mib}m,mode=755")
    root = staging / "root"
    root.mkdir(mode=0o755)
    created: list[Path] = []
    for source in binds:
        _bind(libc, source, root / source.lstrip("/"), created)
    for hidden in hide:  # instructor files that happen to lie inside a bound folder
        if hidden.rstrip("/") in ("", "/tmp", "/work") or any(b.startswith(hidden.rstrip("/") + "/") for b in binds):
            continue  # never over the run's own folders or over a bound folder the run needs
        target = root / hidden.lstrip("/")
        if target.is_dir() and not target.is_symlink():
            _mount(libc, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=1m,mode=755")
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name in ("null", "zero", "random", "urandom"):
        if os.path.exists(f"/dev/{name}"):
            _bind(libc, f"/dev/{name}", dev / name, created)
    (root / "proc").mkdir(exist_ok=True)
    try:
        _mount(libc, "proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        _bind(libc, "/proc", root / "proc", created)
    for folder, mode in (("tmp", 0o1777), ("work", 0o700)):
        path = root / folder
        path.mkdir(exist_ok=True)
        os.chmod(path, mode)
    if uid >= 0:
        os.chown(root / "work", uid, uid)
    os.chroot(root)
    os.chdir("/work")


def _limits(spec: dict) -> list[str]:
    """Set the resource limits; returns a warning for each the system refused (the run goes on without it)."""
    cpu = int(spec["cpu_seconds"])
    warnings = []
    for name, soft, hard in (
        ("RLIMIT_AS", spec["memory_bytes"], spec["memory_bytes"]),
        ("RLIMIT_CPU", cpu, cpu + 2),
        ("RLIMIT_FSIZE", spec["file_bytes"], spec["file_bytes"]),
        ("RLIMIT_NOFILE", 256, 256),
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_NPROC", spec["processes"], spec["processes"]),
    ):
        if name == "RLIMIT_NPROC" and spec["uid"] < 0:
            warnings.append("no process limit: RLIMIT_NPROC counts per user, and the run has no user id of its own")
            continue
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (AttributeError, ValueError, OSError) as err:
            warnings.append(f"{name} could not be set ({err}): the run has no such limit")
    return warnings


def _sandbox(spec: dict) -> dict:
    """Isolate this process as far as the system allows; returns what was done and warnings."""
    done = {"namespace": False, "network": False, "uid": os.getuid(), "warnings": []}
    uid = spec["uid"]
    libc = _libc()
    if spec.get("isolate", True) and os.geteuid() == 0 and not hasattr(libc, "unshare"):
        done["warnings"].append("this system has no unshare(2): the submission sees the grader's file system")
    elif spec.get("isolate", True) and os.geteuid() == 0:
        for flags, network in ((CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC, True), (CLONE_NEWNS | CLONE_NEWNET, True),
                               (CLONE_NEWNS, False)):
            if libc.unshare(flags) == 0:
                done["network"] = network
                break
        else:
            done["warnings"].append(f"no mount namespace ({os.strerror(ctypes.get_errno())}): the submission "
                                    "sees the grader's file system")
        if flags & CLONE_NEWNS and not done["warnings"]:
            try:
                _private_root(libc, spec["binds"], spec.get("hide", []), uid, spec["tmpfs_mib"])
                done["namespace"] = True
            except OSError as err:
                libc.umount2(b"/tmp", 2)  # MNT_DETACH: the staging tmpfs, so that the fallback folder shows again
                done["warnings"].append(f"no private root ({err}): the submission sees the grader's file system")
        if not done["network"]:
            done["warnings"].append("no network namespace: the submission can use the network")
    if not done["namespace"]:
        os.chdir(spec["workdir"])
    os.environ.clear()
    os.environ.update(spec["env"])
    os.environ["HOME"] = os.getcwd()
    done["warnings"] += _limits(spec)
    if uid >= 0 and os.geteuid() == 0:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        done["uid"] = os.getuid()
    return done


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _error(err: BaseException) -> str:
    return _short(f"{type(err).__name__}: {err}")


def _plain(value, depth: int = 0):
    """A probe's value as JSON data: numbers, booleans, strings, lists, dicts and tensors."""
    import numpy as np
    import torch

    if depth > 10:
        raise TypeError("the value is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise TypeError(f"a string of {len(value)} characters is too long")
        return value
    if isinstance(value, int):
        if abs(value) > 1 << 63:
            return float(value)
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)):
        value = torch.as_tensor(np.asarray(value))
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_complex():
            raise TypeError("complex tensors are not supported")
        if t.numel() > MAX_ELEMENTS:
            raise TypeError(f"a tensor of {t.numel()} elements is too large")
        if t.dim() == 0:
            return t.item() if t.dtype != torch.bool else bool(t.item())
        kind = "bool" if t.dtype == torch.bool else ("float" if t.is_floating_point() else "int")
        data = t.flatten().tolist()
        return {"__tensor__": list(t.shape), "kind": kind, "data": data}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    raise TypeError(f"the grader cannot compare a value of type {type(value).__name__}")


class _Shell:
    """Stands in for IPython's ``get_ipython()`` in transformed magics: every magic does nothing."""

    def run_line_magic(self, *args, **kwargs):
        return None

    run_cell_magic = system = getoutput = run_line_magic


def _compile(source: str, label: str):
    try:
        return compile(source, label, "exec")
    except SyntaxError:
        from IPython.core.inputtransformer2 import TransformerManager

        return compile(TransformerManager().transform_cell(source), label, "exec")


def _run(spec: dict, out: _Out) -> None:
    ns: dict = {"__name__": "__main__", "get_ipython": lambda: _Shell()}
    for cell in spec["cells"]:
        record = {"event": "cell", "id": cell["id"], "error": None}
        try:
            exec(_compile(cell["source"], f"<cell {cell['id']}>"), ns)  # noqa: S102 - the sandboxed code
        except BaseException as err:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
            record["error"] = _error(err)
        out.write(record)
    for question in spec["questions"]:
        local = dict(ns)  # probe helpers do not clobber names the answers look up in their globals
        setup_error = None
        try:
            if question.get("setup"):
                exec(compile(question["setup"], f"<setup of {question['grade_id']}>", "exec"), local)  # noqa: S102
        except BaseException as err:  # noqa: BLE001
            setup_error = _error(err)
        for index, probe in enumerate(question["probes"]):
            record = {"event": "probe", "question": question["grade_id"], "index": index}
            if setup_error:
                record["error"] = setup_error
            else:
                try:
                    record["value"] = _plain(eval(compile(probe, f"<probe {index}>", "eval"), local))  # noqa: S307
                except BaseException as err:  # noqa: BLE001
                    record["error"] = _error(err)
            out.write(record)
    out.write({"event": "done"})


def _prewarm() -> None:
    """Import, as trusted code and once per server, what every run needs (forked children share it)."""
    import numpy  # noqa: F401
    import torch

    torch.set_num_threads(1)
    for name in ("IPython.core.inputtransformer2", "mtml_lib.metrics", "mtml_lib.meta"):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing optional module is imported (or fails) in the run instead
            pass


def _child(spec: dict, out: _Out) -> None:
    """The forked run: isolate, report how, run the cells and probes, and leave without any cleanup."""
    try:
        done = _sandbox(spec)
        out.write({"event": "sandbox", **done})
        _run(spec, out)
        code = 0
    except BaseException:  # noqa: BLE001 - a failure of the sandbox itself: told in the log
        import traceback

        traceback.print_exc()
        code = 70
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)  # no atexit hooks or finalisers of the submission after the report


def serve(sock_fd: int) -> int:
    """Fork server: imports torch once, then for each request (a spec, a result pipe and a log file, sent as
    file descriptors over the socket) forks a child that starts a new session and runs :func:`_child`.
    Replies ``{"pid"}`` when the child started and ``{"pid", "status"}`` when it ended. The server itself
    never runs submitted code."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    _prewarm()
    sock.send(b'{"ready": true}')
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 4096, 3)
        except OSError:
            return 0
        if not message or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return 0
        spec_fd, result_fd, log_fd = fds
        pid = os.fork()
        if pid == 0:
            sock.close()
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            with os.fdopen(spec_fd, "rb") as f:
                spec = json.loads(f.read())
            os.dup2(result_fd, 3)
            os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # no descriptor from before the root
            sys.stdin = open(os.devnull)  # noqa: SIM115
            _child(spec, _Out(3))
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        sock.send(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}).encode())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(int(argv[1]))
    raise SystemExit("usage: python -m mtml_lib.grading.sandbox --serve FD (started by the grader)")


# --------------------------------------------------------------------------------------- parent side
def default_binds() -> list[str]:
    """What the child's private root shows (read-only): system folders, Python, the environment, mtml_lib."""
    import mtml_lib

    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
             sys.base_prefix, sys.prefix, str(Path(mtml_lib.__file__).resolve().parent)]
    for name in ("numpy", "torch", "IPython"):
        try:
            module = __import__(name)
            paths.append(str(Path(module.__file__).resolve().parent.parent))
        except ImportError:
            pass
    chosen: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths if os.path.lexists(p)}, key=len):
        if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(path)
    return chosen


def _uid_processes(uid: int) -> list[int]:
    """Live (not zombie) processes whose real or effective user id is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uids = fields.get("Uid", "").split()
        if str(uid) in uids[:2] and not fields.get("State", "").strip().startswith(("Z", "X")):
            pids.append(int(entry))
    return pids


def kill_user(uid: int) -> bool:
    """Kill every process of ``uid`` (a helper with that id sends ``kill(-1, SIGKILL)``); True when none is left."""
    import time

    for _ in range(5):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if not _uid_processes(uid):
            return True
        time.sleep(0.05)
    return not _uid_processes(uid)


def pick_uid() -> int:
    """An unused user id for the children (no passwd entry, no process), or -1 when not root."""
    import pwd

    if os.geteuid() != 0:
        return -1
    forced = os.environ.get("MTML_SANDBOX_UID")
    if forced:
        return int(forced)
    start = 61000 + os.getpid() % 900
    for uid in list(range(start, 62000)) + list(range(61000, start)):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        if not _uid_processes(uid):
            return uid
    raise RuntimeError("no free user id in 61000..61999 for the sandbox")


class RunResult:
    def __init__(self):
        self.records: list[dict] = []
        self.timed_out = False
        self.returncode: int | None = None
        self.log = ""
        self.leftover: list[int] = []
        self.sandbox: dict | None = None


class Server:
    """The grader's handle on a fork server (:func:`serve`), started on first use and again if it died."""

    def __init__(self):
        self.proc = None
        self.sock = None

    def _start(self) -> None:
        import socket
        import subprocess

        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-m", "mtml_lib.grading.sandbox", "--serve",
                                      str(theirs.fileno())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/",
                                     start_new_session=True)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(300)
        if json.loads(self.sock.recv(4096) or b"{}").get("ready") is not True:
            raise RuntimeError("the grading sandbox's server did not start")
        self.sock.settimeout(None)

    def start(self, spec_fd: int, result_fd: int, log_fd: int) -> int:
        import socket

        for attempt in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                socket.send_fds(self.sock, [b"run"], [spec_fd, result_fd, log_fd])
                reply = json.loads(self.sock.recv(4096) or b"{}")
                return int(reply["pid"])
            except (OSError, ValueError, KeyError):
                if attempt:
                    raise
                self.proc.kill()
        raise AssertionError("unreachable")

    def status(self, wait: float) -> int | None:
        """The child's exit code once it ended, else None after ``wait`` seconds."""
        import select

        if not select.select([self.sock], [], [], wait)[0]:
            return None
        try:
            reply = json.loads(self.sock.recv(4096) or b"{}")
        except (OSError, ValueError):
            reply = {}
        if "status" not in reply:  # the server died: its child was killed with it, or is killed below
            self.proc.kill()
            self.proc.wait()
            return -9
        return int(reply["status"])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None


def run(spec: dict, timeout: float, uid: int, server: Server, max_report_bytes: int = 16 * MIB) -> RunResult:
    """Run ``spec`` in a sandboxed child forked by ``server``; always returns, with the child and everything
    it started dead."""
    import select
    import shutil
    import tempfile
    import time

    result = RunResult()
    private = Path(tempfile.mkdtemp(prefix="mtml-grade-"))
    workdir = private / "work"
    workdir.mkdir()
    if uid >= 0:
        os.chown(workdir, uid, uid)
    spec = dict(spec, uid=uid, workdir=str(workdir))
    (private / "spec.json").write_text(json.dumps(spec))
    read_fd, write_fd = os.pipe()
    buffer = b""
    try:
        with open(private / "spec.json", "rb") as spec_file, open(private / "log.txt", "wb") as log:
            start = time.monotonic()
            pid = server.start(spec_file.fileno(), write_fd, log.fileno())
            os.close(write_fd)
            write_fd = -1
            try:
                eof = False
                exited_at = None
                while True:
                    now = time.monotonic()
                    if now - start > timeout:
                        result.timed_out = result.returncode is None or not eof
                        break
                    if result.returncode is None:
                        result.returncode = server.status(0.0)
                    if result.returncode is not None:
                        exited_at = exited_at or now
                        if eof or now - exited_at > 1.0:  # a descendant may hold the pipe open
                            break
                    if eof:
                        time.sleep(0.02)
                        continue
                    ready, _, _ = select.select([read_fd], [], [], 0.05)
                    if ready:
                        chunk = os.read(read_fd, 1 << 16)
                        if not chunk:
                            eof = True
                        elif len(buffer) < max_report_bytes:
                            buffer += chunk
            finally:  # also on Ctrl-C: nothing of the run survives it
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                if uid >= 0:
                    kill_user(uid)
                    result.leftover = _uid_processes(uid)
            while result.returncode is None:
                result.returncode = server.status(5.0)
        size = os.path.getsize(private / "log.txt")
        with open(private / "log.txt", "rb") as log:
            log.seek(max(0, size - 4000))
            result.log = log.read().decode("utf-8", "replace")
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        shutil.rmtree(private, ignore_errors=True)
    for line in buffer[:max_report_bytes].splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # anything the submission wrote there is only data
            continue
        if isinstance(record, dict):
            if record.get("event") == "sandbox" and result.sandbox is None and not result.records:
                result.sandbox = record
            result.records.append(record)
    return result


if __name__ == "__main__":
    sys.exit(main())

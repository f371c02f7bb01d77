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
exploits, and side channels of a shared machine (timing).

**What the child learns, and when.** The questions' probes (the hidden inputs and the expressions evaluated
on them) must run in the child, but the child gets each question only when it is that question's turn:
the spec it starts with holds the cells (the instructor's setup cells and the submission's answers) and
the limits, nothing else. After the cells it reports ``{"event": "cells"}``; only then does the grader
write the first question to a second pipe, and each next question only after the child reported
``{"event": "answered"}`` for the one before. So code that runs in the answer cells cannot see any probe
(it is in no file, no variable and no buffer of the process yet), and code that runs during question k
cannot change what was recorded for the questions before it: the grader takes a probe's value only
while its question is the current one, and takes no cell report after ``cells``. What a submission sees
during a question (that question's inputs) it could only carry out through the report, and the grader
keeps none of the child's text from that phase (see :mod:`mtml_lib.grading`).

**Library functions a question asks for** (the exercise's ``unavailable`` list, see
:mod:`mtml_lib.exercises`) are replaced before any exercise code runs: each listed function's code object
is swapped in place for one that raises (so every alias, import and closure that refers to the function
object reaches the stub, and the original code object is freed), every function of a listed class
likewise, and in the private root the source file of each such module and its cached bytecode are
covered by an empty file, so that the implementation cannot be read back from disk, reloaded or copied
with ``inspect``. A listed package that the grader has not imported (``sklearn``) is hidden from the
file system altogether. Without a private root the stubs still apply but the source stays readable
(with a warning).

Protocol: the grader starts a fork server (:func:`serve`, trusted code that imports torch once and never
runs submitted code) and, for each run, sends it four file descriptors: a JSON *spec* (the cells to
run, the limits, the unavailable names), a pipe for the report, a log file and a pipe that brings the
questions. The server forks a child that starts a new session, isolates itself and writes one JSON
object per line to the report pipe: first ``{"event": "sandbox", ...}`` (written before any exercise code
runs), then ``{"event": "cell", ...}`` per cell, ``{"event": "cells"}``, and for each question received
one ``{"event": "probe", ...}`` per probe and ``{"event": "answered"}``, then ``{"event": "done"}``.
"""

from __future__ import annotations

import ctypes
import fcntl
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

REPORT_FD, QUESTIONS_FD = 3, 4  # the child's report pipe and the pipe that brings it the questions
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


def _private_root(libc, binds: list[str], hide: list[str], uid: int, tmpfs_mib: int,
                  hide_files: list[str] = ()) -> None:
    """Mount namespace + new root on a tmpfs with read-only binds; ``hide`` folders and ``hide_files``
    covered by empty ones; ends in the new root at /work."""
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
    empty = staging / "empty"
    empty.touch(mode=0o444)
    for hidden in hide_files:  # the source of what an exercise makes unavailable
        target = root / hidden.lstrip("/")
        if target.is_dir() and not target.is_symlink():
            _mount(libc, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=1m,mode=755")
        elif target.is_file() and not target.is_symlink():
            _mount(libc, str(empty), target, None, MS_BIND)
            _mount(libc, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
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
    hide_files, done["unavailable"] = _make_unavailable(spec.get("unavailable", []))
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
                _private_root(libc, spec["binds"], spec.get("hide", []), uid, spec["tmpfs_mib"], hide_files)
                done["namespace"] = True
            except OSError as err:
                libc.umount2(b"/tmp", 2)  # MNT_DETACH: the staging tmpfs, so that the fallback folder shows again
                done["warnings"].append(f"no private root ({err}): the submission sees the grader's file system")
        if not done["network"]:
            done["warnings"].append("no network namespace: the submission can use the network")
    if not done["namespace"]:
        os.chdir(spec["workdir"])
        if hide_files:
            done["warnings"].append("no private root: the source of what the exercise makes unavailable "
                                    "stays readable to the submission")
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


def unavailable_message(name: str) -> str:
    """What a stubbed library function raises (the grader recognises this text, and only this one)."""
    return f"RuntimeError: {name} is not available while this exercise is graded: write your own"


def _stub(function, name: str) -> None:
    """Swap ``function``'s code in place for one that raises (every reference to it now reaches the stub).
    The stub has the same free variables as the original (``__class__`` of a method that calls
    ``super()``), which Python requires of a code object put into an existing function."""
    message = unavailable_message(name).split(": ", 1)[1]
    while function is not None:
        free = function.__code__.co_freevars
        text = "def factory():\n" + "".join(f"    {v} = None\n" for v in free) + \
            "    def stub(*args, **kwargs):\n" + (f"        ({', '.join(free)},)\n" if free else "") + \
            f"        raise RuntimeError({message!r})\n    return stub\n"
        scope: dict = {}
        exec(text, scope)  # noqa: S102 - trusted text built here
        code = scope["factory"]().__code__
        if code.co_freevars != free:
            raise ValueError(f"{name}: cannot build a stub with the free variables {free}")
        function.__code__ = code
        function = getattr(function, "__wrapped__", None)


def _functions_of(cls) -> list:
    """The functions a class defines itself (methods, static and class methods, property accessors)."""
    found = []
    for value in vars(cls).values():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            found += [f for f in (value.fget, value.fset, value.fdel) if f is not None]
        elif callable(value) and hasattr(value, "__code__"):
            found.append(value)
    return found


def _source_files(module) -> list[str]:
    """A module's source file and its cached bytecode files."""
    import importlib.util

    origin = getattr(module, "__file__", None)
    if not origin:
        return []
    files = [os.path.realpath(origin)]
    cache = Path(importlib.util.cache_from_source(files[0]))
    if cache.parent.is_dir():
        files += sorted(str(p) for p in cache.parent.glob(Path(files[0]).stem + ".*.pyc"))
    return files


def _package_paths(name: str) -> list[str]:
    """Where a top-level package or module ``name`` lies on ``sys.path`` (every copy), without importing it."""
    found = []
    for entry in sys.path:
        base = Path(entry or ".")
        if not base.is_dir():
            continue
        candidates = [base / name] + list(base.glob(f"{name}.py")) + list(base.glob(f"{name}.*.so"))
        found += [str(p.resolve()) for p in candidates if p.exists()]
    return sorted(set(found))


def _make_unavailable(names: list[str]) -> tuple[list[str], list[str]]:
    """Stub the listed library functions and classes (trusted code, before any exercise code); returns the
    files and folders the private root must cover, and the names made unavailable.

    A name is ``package.module.attribute`` (a function or class; every function or class a module defines
    when the name is a module of this package), or a top-level package the grader has not imported
    (hidden from the file system; it cannot be imported at all)."""
    import importlib

    hide: list[str] = []
    for name in names:
        top = name.split(".")[0]
        if top != "mtml_lib":
            if any(m == top or m.startswith(top + ".") for m in sys.modules):
                raise ValueError(f"{name} is already imported by the grader and cannot be made unavailable")
            hide += _package_paths(top)
            continue
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix is the module
            try:
                module = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        else:
            raise ValueError(f"{name} cannot be imported")
        target = module
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        if target is module:
            members = [v for v in vars(module).values() if getattr(v, "__module__", None) == module.__name__]
        else:
            members = [target]
        for member in members:
            functions = _functions_of(member) if isinstance(member, type) else [member]
            for function in functions:
                if hasattr(function, "__code__"):
                    _stub(function, name)
            hide += _source_files(sys.modules[member.__module__] if hasattr(member, "__module__") else module)
    import linecache

    linecache.clearcache()
    return sorted(set(hide)), list(names)


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


def _evaluate(question: dict, ns: dict, out: _Out) -> None:
    """One question: the instructor's references for earlier parts (if any) replace the answers' names for
    its duration, its setup makes the inputs, and each probe's value is reported."""
    saved = dict(ns)
    try:
        setup_error = None
        local = ns
        try:
            for source in question.get("references", []):
                exec(compile(source, f"<reference for {question['grade_id']}>", "exec"), ns)  # noqa: S102
            local = dict(ns)  # probe helpers do not clobber names the answers look up in their globals
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
    finally:
        ns.clear()
        ns.update(saved)
    out.write({"event": "answered", "question": question["grade_id"]})


def _run(spec: dict, out: _Out, questions_fd: int) -> None:
    ns: dict = {"__name__": "__main__", "get_ipython": lambda: _Shell()}
    for cell in spec["cells"]:
        record = {"event": "cell", "id": cell["id"], "error": None}
        try:
            exec(_compile(cell["source"], f"<cell {cell['id']}>"), ns)  # noqa: S102 - the sandboxed code
        except BaseException as err:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
            record["error"] = _error(err)
        out.write(record)
    out.write({"event": "cells"})
    # The questions come one at a time, each after the grader read the answers to the one before.
    with os.fdopen(questions_fd, "rb", closefd=False) as questions:
        for line in iter(questions.readline, b""):
            _evaluate(json.loads(line), ns, out)
    out.write({"event": "done"})


def _prewarm(names=()) -> None:
    """Import, as trusted code and once per server, what every run needs (forked children share it), and
    the modules of this package that hold ``names`` (an exercise's unavailable names), so that a run does
    not import them again; stubbing happens in each run."""
    import importlib

    import numpy  # noqa: F401
    import torch

    torch.set_num_threads(1)
    modules = ["IPython.core.inputtransformer2", "mtml_lib.metrics", "mtml_lib.meta"]
    for name in names:
        parts = name.split(".")
        if parts[0] == "mtml_lib":
            modules += [".".join(parts[:cut]) for cut in range(len(parts), 1, -1)]
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not a module (an attribute's name), or imported (or failing) in the run
            pass


def _child(spec: dict, out: _Out) -> None:
    """The forked run: isolate, report how, run the cells and probes, and leave without any cleanup."""
    try:
        done = _sandbox(spec)
        out.write({"event": "sandbox", **done})
        _run(spec, out, QUESTIONS_FD)
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


def serve(sock_fd: int, prewarm=()) -> int:
    """Fork server: imports torch once, then for each request (a spec, a result pipe, a log file and a
    questions pipe, sent as file descriptors over the socket) forks a child that starts a new session and runs :func:`_child`.
    Replies ``{"pid"}`` when the child started and ``{"pid", "status"}`` when it ended. The server itself
    never runs submitted code."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    _prewarm(prewarm)
    sock.send(b'{"ready": true}')
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 4096, 4)
        except OSError:
            return 0
        if not message or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            return 0
        spec_fd, result_fd, log_fd, questions_fd = fds
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
            questions_fd = fcntl.fcntl(questions_fd, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4
            os.dup2(result_fd, REPORT_FD)
            os.dup2(questions_fd, QUESTIONS_FD)
            os.closerange(QUESTIONS_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # none from before the root
            sys.stdin = open(os.devnull)  # noqa: SIM115
            _child(spec, _Out(REPORT_FD))
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        sock.send(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}).encode())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(int(argv[1]), [n for n in argv[2:3] for n in n.split(",") if n])
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
    """What the grader kept of one run: only records that arrived when they were due (see the module
    docstring), each checked to be a mapping."""

    def __init__(self):
        self.sandbox: dict | None = None  # the first record, written before any exercise code ran
        self.cells: list[dict] = []  # one per cell, up to the child's "cells" report
        self.cells_done = False  # the child reported the end of the cells (the questions then started)
        self.values: dict[tuple[str, int], dict] = {}  # (grade_id, probe index) -> {"value"} or {"error"}
        self.answered: list[str] = []  # the questions the child finished, in order
        self.timed_out = False
        self.returncode: int | None = None
        self.log = ""
        self.leftover: list[int] = []


class _Conversation:
    """The grader's side of one run: reads the child's report as it comes and sends each question when due."""

    def __init__(self, result: RunResult, questions: list[dict], write_fd: int, max_bytes: int):
        self.result, self.questions, self.fd = result, questions, write_fd
        self.current = -1  # index of the question being answered; -1 before the cells ended
        self.pending = b""
        self.buffer = b""
        self.seen = 0
        self.max_bytes = max_bytes
        self.first = True

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.max_bytes:
            return  # anything past the limit is dropped, and so are the probes it would hold
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # anything the submission wrote there is only data
                record = None
            first, self.first = self.first, False
            if isinstance(record, dict):
                self._accept(record, first)

    def _accept(self, record: dict, first: bool) -> None:
        result, event = self.result, record.get("event")
        if first:
            if event == "sandbox":
                result.sandbox = record
            return
        if self.current < 0:
            if event == "cell":
                result.cells.append(record)
            elif event == "cells":
                result.cells_done = True
                self._next()
            return
        if self.current >= len(self.questions):
            return
        gid = self.questions[self.current]["grade_id"]
        if record.get("question") != gid:
            return
        index = record.get("index")
        if event == "probe" and isinstance(index, int) and not isinstance(index, bool) \
                and 0 <= index < len(self.questions[self.current]["probes"]):
            result.values.setdefault((gid, index), record)
        elif event == "answered":
            result.answered.append(gid)
            self._next()

    def _next(self) -> None:
        self.current += 1
        if self.current < len(self.questions):
            self.pending += (json.dumps(self.questions[self.current]) + "\n").encode()
        self.flush()

    def flush(self) -> None:
        """Write what is due without blocking; close the pipe after the last question."""
        if self.fd < 0:
            return
        try:
            while self.pending:
                self.pending = self.pending[os.write(self.fd, self.pending):]
        except BlockingIOError:
            return
        except OSError:  # the child closed its end: it gets nothing more
            self.pending = b""
            self.close()
            return
        if self.current >= len(self.questions):
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Server:
    """The grader's handle on a fork server (:func:`serve`), started on first use and again if it died."""

    def __init__(self):
        self.proc = None
        self.sock = None
        self.prewarm: set[str] = set()  # unavailable names whose modules the server imports when it starts

    def _start(self) -> None:
        import socket
        import subprocess

        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-m", "mtml_lib.grading.sandbox", "--serve",
                                      str(theirs.fileno()), ",".join(sorted(self.prewarm))], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/",
                                     start_new_session=True)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(300)
        if json.loads(self.sock.recv(4096) or b"{}").get("ready") is not True:
            raise RuntimeError("the grading sandbox's server did not start")
        self.sock.settimeout(None)

    def start(self, spec_fd: int, result_fd: int, log_fd: int, questions_fd: int) -> int:
        import socket

        for attempt in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                socket.send_fds(self.sock, [b"run"], [spec_fd, result_fd, log_fd, questions_fd])
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


def run(spec: dict, timeout: float, uid: int, server: Server, questions: list[dict] | None = None,
        max_report_bytes: int = 16 * MIB) -> RunResult:
    """Run ``spec`` in a sandboxed child forked by ``server``, sending it ``questions`` (each
    ``{"grade_id", "setup", "probes", "references"}``) one at a time after its cells; always returns, with
    the child and everything it started dead."""
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
    q_read, q_write = os.pipe()
    os.set_blocking(q_write, False)
    talk = _Conversation(result, list(questions or []), q_write, max_report_bytes)
    try:
        with open(private / "spec.json", "rb") as spec_file, open(private / "log.txt", "wb") as log:
            start = time.monotonic()
            pid = server.start(spec_file.fileno(), write_fd, log.fileno(), q_read)
            os.close(write_fd)
            os.close(q_read)
            write_fd = q_read = -1
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
                    talk.flush()
                    ready, _, _ = select.select([read_fd], [], [], 0.05)
                    if ready:
                        chunk = os.read(read_fd, 1 << 16)
                        if not chunk:
                            eof = True
                        else:
                            talk.feed(chunk)
            finally:  # also on Ctrl-C: nothing of the run survives it
                talk.close()
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
        talk.close()
        for fd in (write_fd, q_read, read_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(private, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())

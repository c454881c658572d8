"""The sandbox's child side (stdlib only): run as ``python -I -c <this file's text>`` by
:mod:`vcrd_evaluators.sandbox` inside ``unshare --net --pid --mount --mount-proc --fork --kill-child``.

It starts as root inside the new namespaces, reads one JSON request from stdin, mounts private tmpfs
over the world-writable directories, creates the throw-away working directory, sets the resource
limits, drops to the unprivileged uid/gid for good, re-arms the parent-death signal (a uid change
clears it) and runs the program in this process (no ``execve``: ``RLIMIT_NPROC`` is checked at exec
for the new uid). The run passed only if the program and its tests returned normally: then the
request's nonce is written to stdout and the process ends with ``os._exit(0)``.

Limitation: the nonce lives in this process, so a program written to *forge* a pass can read it (e.g.
through ``sys._getframe``) and print it. The sandbox protects the machine, the run and its files from the
program; it does not make the grade of deliberately adversarial code trustworthy (no in-process secret
can). Exit tricks (``sys.exit(0)``, ``os._exit(0)``, forks) without reading the nonce do fail.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import traceback

MS_NOSUID, MS_NODEV = 2, 4
PR_SET_PDEATHSIG = 1


def main():
    request = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    libc = ctypes.CDLL(None, use_errno=True)
    for target in request["tmpfs"]:
        if not os.path.isdir(target):
            continue
        options = f"size={request['tmpfs_kib']}k,mode=1777".encode()
        if libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
            raise OSError(ctypes.get_errno(), "cannot mount a private tmpfs on " + target)
    work = request["work"]
    uid, gid = request["uid"], request["gid"]
    os.makedirs(work, mode=0o700)
    os.chown(work, uid, gid)
    for name, value in request["limits"].items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (value, value))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError("could not drop privileges")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.chdir(work)
    os.environ.clear()
    os.environ.update(request["env"])
    nonce = request.pop("nonce")
    program = request.pop("program")
    code = compile(program, "solution.py", "exec")
    del program
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit as exc:
        sys.stderr.write(f"SystemExit({exc.code!r}) raised before the tests finished\n")
        sys.stderr.flush()
        os._exit(1)
    except BaseException as exc:
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next, limit=-3)))
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.getpid() != 1:  # a forked copy of the program that returned normally: never a pass
        os._exit(1)
    os.write(1, ("\n" + nonce + "\n").encode())
    os._exit(0)


if __name__ == "__main__":  # run as `python -c`; importing this module does nothing
    try:
        main()
    except BaseException as exc:  # a setup failure of the sandbox itself: reported, never a pass
        try:
            sys.stderr.write(f"sandbox setup failed: {type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
        finally:
            os._exit(2)

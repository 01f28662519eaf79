"""Many hosts on one machine: Linux namespaces joined to a server namespace by veth links.

A ``Network`` makes (all as root, with ``unshare``, ``nsenter`` and ``ip``):

* a **server namespace** (network and hostname of its own) with a bridge ``br0`` at
  ``<net>.1``: the scenario's own servers listen there (``chaos.hosted``), never the
  shared ones, which listen on this machine's loopback and cannot be reached from it;
* **hosts** ``host1``, ``host2``...: each a namespace with its own network, hostname,
  PID space and ``/proc`` (so two hosts' processes share PIDs, as on real machines), whose
  ``eth0`` at ``<net>.(10 + i)`` is one end of a veth pair; the other end, ``h<i>`` in the
  server namespace, is a port of the bridge. A host reaches only that subnet (no route
  elsewhere);
* a **test link**: a veth pair from this namespace (``at<random>`` at ``<net>.2``) to the
  bridge, so the scenario's own process submits and counts over the network too.

``cut(host)`` sets the host's bridge port down: its packets are dropped (as on a pulled
cable; connections hang, nothing is refused), until ``heal(host)``.

Each namespace lives as long as a small holder process (pid 1 of a host's PID space)
that exits when its stdin closes: ``close()``, or the death of this process, ends them
all, and with them every process started in a host and every link (a veth pair goes with
either of its namespaces). ``unavailable()`` says why namespaces cannot be made here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the holder of a namespace: reaps orphans (pid 1 of a host), exits when stdin closes
_HOLDER = "import signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); sys.stdin.read()"
_TOOLS = ("unshare", "nsenter", "ip")


def unavailable() -> str | None:
    """Why namespaces cannot be made on this machine, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces and veth links needs root"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (util-linux, iproute2)"
    try:
        done = subprocess.run(
            ["unshare", "--net", "--uts", "--pid", "--mount", "--fork", "--mount-proc", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"unshare cannot make namespaces here: {done.stderr.strip()}"
    return None


def run(command: Sequence[str], timeout: float = 60) -> str:
    """Run a command, return its output; ``RuntimeError`` with its message on failure."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


class Namespace:
    """A set of namespaces held by one holder process."""

    def __init__(self, name: str, kinds: Sequence[str]) -> None:
        self.name = name
        self.kinds = tuple(kinds)
        flags = [f"--{kind}" for kind in kinds]
        if "pid" in kinds:
            flags += ["--mount-proc"]
        # --fork: the holder is pid 1 of a new PID space; --kill-child: unshare's death
        # (this process's) takes it along
        self._process = subprocess.Popen(
            ["unshare", *flags, "--fork", "--kill-child", sys.executable, "-c", _HOLDER],
            stdin=subprocess.PIPE,
        )
        self.pid = _child_of(self._process.pid)
        if "uts" in kinds:
            self.run("hostname", name)

    def enter(self, cwd: Path | str | None = None) -> list[str]:
        """The command prefix that runs a program inside these namespaces."""
        flags = {"net": "-n", "uts": "-u", "pid": "-p", "mount": "-m"}
        prefix = ["nsenter", "-t", str(self.pid), *(flags[k] for k in self.kinds)]
        # entering a mount namespace moves to its root: name the folder to work in
        return [*prefix, f"--wd={cwd or os.getcwd()}", "--"]

    def run(self, *command: str, timeout: float = 60) -> str:
        """Run a command inside, wait for it, return its output."""
        return run([*self.enter(), *command], timeout=timeout)

    def popen(
        self,
        command: Sequence[str],
        *,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        **options: object,
    ) -> subprocess.Popen[bytes]:
        """Start a program inside (``nsenter`` forks it: ``inner_pid`` finds it)."""
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            [*self.enter(cwd), *command], cwd=cwd, env=env, **options
        )

    def members(self) -> list[int]:
        """Pids (here) of every process in this network namespace but the holder."""
        try:
            mine = os.readlink(f"/proc/{self.pid}/ns/net")
        except OSError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.pid:
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "net") == mine:
                        found.append(int(entry.name))
        return found

    def close(self) -> None:
        """End everything inside (a daemon such as epmd outlives the holder of a network
        namespace without a PID space of its own), then the holder."""
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                assert self._process.stdin is not None
                self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def inner_pid(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The pid (in this namespace) of the program an ``nsenter`` process forked."""
    return _child_of(process.pid, timeout)


def _child_of(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} started no child within {timeout:g} s")
        time.sleep(0.01)


@dataclass
class Host:
    """One host: its namespaces, its address and its port on the bridge."""

    name: str
    address: str
    port: str  # the bridge port in the server namespace
    namespace: Namespace


class Network:
    """A server namespace, ``hosts`` host namespaces and a test link; see the module."""

    def __init__(self, hosts: int) -> None:
        self.subnet = _free_subnet()
        base = self.subnet.network_address
        self.server_address = str(base + 1)
        self.test_address = str(base + 2)
        self.test_link = f"at{os.urandom(4).hex()}"
        self.server: Namespace | None = None
        self.hosts: list[Host] = []
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int) -> None:
        prefix = self.subnet.prefixlen
        server = self.server = Namespace("server", ("net", "uts"))
        server.run("ip", "link", "set", "lo", "up")
        server.run("ip", "link", "add", "br0", "type", "bridge")
        server.run("ip", "addr", "add", f"{self.server_address}/{prefix}", "dev", "br0")
        server.run("ip", "link", "set", "br0", "up")
        # the test link: this namespace's end here, the other a port of the bridge
        run(["ip", "link", "add", self.test_link, "type", "veth",
             "peer", "name", "test0", "netns", str(server.pid)])  # fmt: skip
        run(["ip", "addr", "add", f"{self.test_address}/{prefix}", "dev", self.test_link])
        run(["ip", "link", "set", self.test_link, "up"])
        server.run("ip", "link", "set", "test0", "master", "br0", "up")
        for index in range(1, count + 1):
            self.hosts.append(self._add_host(index))

    def _add_host(self, index: int) -> Host:
        assert self.server is not None
        name = f"host{index}"
        namespace = Namespace(name, ("net", "uts", "pid", "mount"))
        address = str(self.subnet.network_address + 10 + index)
        port = f"h{index}"
        self.server.run("ip", "link", "add", port, "type", "veth",
                        "peer", "name", "eth0", "netns", str(namespace.pid))  # fmt: skip
        self.server.run("ip", "link", "set", port, "master", "br0", "up")
        namespace.run("ip", "link", "set", "lo", "up")
        namespace.run("ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        namespace.run("ip", "link", "set", "eth0", "up")
        return Host(name, address, port, namespace)

    def cut(self, host: Host) -> None:
        """Cut ``host`` off: its bridge port down, its packets dropped."""
        assert self.server is not None
        self.server.run("ip", "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        """Join ``host`` again."""
        assert self.server is not None
        self.server.run("ip", "link", "set", host.port, "up")

    def close(self) -> None:
        """End every namespace (their processes and links go with them)."""
        for host in self.hosts:
            host.namespace.close()
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(RuntimeError, OSError):  # gone with the server's namespace
            run(["ip", "link", "del", self.test_link])

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200-254.x.0 that no address or route of this machine uses."""
    used = run(["ip", "-4", "-o", "addr", "show"]) + run(["ip", "-4", "route", "show"])
    rng = random.Random()
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.{rng.randint(200, 254)}.{rng.randint(0, 255)}.0/24")
        if f"{'.'.join(str(subnet.network_address).split('.')[:3])}." not in used:
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test network")

"""A Ray cluster of one head and N worker nodes on this machine, all on 127.0.0.1.

For tests and demos of the cluster path (``run --address``, ``submit``, node failures) without
machines::

    python cluster/local_cluster.py start --workers 2 --cpus-per-node 1 --dir .cluster
    python cluster/local_cluster.py status --dir .cluster
    python cluster/local_cluster.py kill-node w1 --dir .cluster     # simulate a node failure
    python cluster/local_cluster.py stop --dir .cluster

What it does:

- Every node (``head``, ``w1``, ``w2``, ...) is a ``ray start`` bound to 127.0.0.1, with its own
  ports (picked free) and its own tag: a custom resource ``node_tag_<name>: 1``.
- Token authentication is on: a fresh token is written to ``DIR/auth_token`` (mode 600) and the
  nodes require it; clients use ``--token-file DIR/auth_token`` (or ``RAY_AUTH_TOKEN_PATH``).
  ``--no-auth`` starts the cluster without authentication.
- ``DIR/cluster.json`` records the GCS address, the dashboard/Jobs URL, the Ray temp directory
  and every node's process ids; ``stop`` and ``kill-node`` stop exactly those processes (and
  their children) by PID. It never runs ``ray stop``, which kills every Ray process on the machine.
- ``--private-path PATH`` (Linux, root): worker nodes run in a mount namespace of their own
  with an empty tmpfs over PATH, so PATH is node-local, as on separate machines; used to test
  that the storage preflight refuses such a path.

Ray binds the machine's address by default and refuses extra nodes when told to stay on
loopback; the nodes are started through a small launcher that keeps 127.0.0.1 for both.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["LocalCluster", "Node", "main"]

# Run `ray start` keeping 127.0.0.1 as the node address (Ray would rewrite it to the machine's
# address) while allowing worker nodes (which Ray refuses in its loopback-only mode).
_LAUNCHER = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
constants.ENABLE_RAY_CLUSTER = True
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(count: int, exclude: tuple[int, ...] = ()) -> list[int]:
    """``count`` distinct ports that are free now, none of ``exclude``."""
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port not in ports and port not in exclude:
            ports.append(port)
    return ports


def _free_range(width: int = 40, avoid: tuple[int, ...] = ()) -> tuple[int, int]:
    """A block of ``width`` ports that are free now (worker processes of one node), clear of ``avoid``."""
    for _ in range(50):
        start = _free_port()
        if start + width > 65000 or any(start <= p < start + width for p in avoid):
            continue
        ok = True
        for port in range(start, start + width):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + width - 1
    raise RuntimeError("no free block of ports for Ray workers")


@dataclass
class Node:
    name: str
    pids: list[int] = field(default_factory=list)
    node_id: str = ""
    private_path: str = ""


@dataclass
class LocalCluster:
    """A head and ``workers`` worker nodes on 127.0.0.1 (see the module docstring)."""

    dir: str
    workers: int = 2
    cpus_per_node: float = 1
    head_cpus: float | None = None
    gpus_per_worker: float = 0
    auth: bool = True
    private_path: str = ""
    gcs_address: str = ""
    dashboard_url: str = ""
    temp_dir: str = ""
    token_file: str = ""
    nodes: list[Node] = field(default_factory=list)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        os.makedirs(self.dir, exist_ok=True)
        self.dir = os.path.abspath(self.dir)
        if self.private_path and (sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare")):
            raise RuntimeError("--private-path needs Linux, root and `unshare` (a mount namespace per worker node)")
        # Unix socket paths must stay under 108 characters: a short temp dir of our own.
        self.temp_dir = tempfile.mkdtemp(prefix="rtlc-", dir="/tmp")
        if self.auth:
            self.token_file = os.path.join(self.dir, "auth_token")
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        gcs_port, dash_port, client_port = _free_ports(3)
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dash_port}"
        self.save()
        try:
            head = ["--head", f"--port={gcs_port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                    f"--ray-client-server-port={client_port}",
                    f"--num-cpus={self.cpus_per_node if self.head_cpus is None else self.head_cpus:g}",
                    "--num-gpus=0"]
            self._start_node("head", head)
            for i in range(1, self.workers + 1):
                self.add_worker(f"w{i}")
            self._wait_for_nodes(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.save()
        return self

    def add_worker(self, name: str) -> Node:
        # A temp dir of its own, as on a separate machine: nodes sharing one would share (and
        # garbage-collect) each other's runtime-environment files, the job's working dir included.
        args = [f"--address={self.gcs_address}", f"--num-cpus={self.cpus_per_node:g}",
                f"--num-gpus={self.gpus_per_worker:g}", f"--temp-dir={self.temp_dir}/{name}"]
        return self._start_node(name, args, private=bool(self.private_path))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every process of the node on 127.0.0.1
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # jobs find `python`
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # A killed node is noticed within seconds, not the default half minute.
        env.setdefault("RAY_health_check_period_ms", "1000")
        env.setdefault("RAY_health_check_failure_threshold", "3")
        env.pop("RAY_ADDRESS", None)
        if self.auth:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = self.token_file
            env.pop("RAY_AUTH_TOKEN", None)
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        return env

    def _start_node(self, name: str, args: list[str], private: bool = False) -> Node:
        given = tuple(int(a.split("=")[1]) for a in args if a.split("=")[0].endswith("-port"))
        ports = _free_ports(6, exclude=given)
        taken = tuple(ports) + given
        low, high = _free_range(avoid=taken)
        common = ["start", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                  f"--resources={json.dumps({f'node_tag_{name}': 1})}",
                  f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
                  f"--metrics-export-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
                  f"--dashboard-agent-listen-port={ports[4]}", f"--dashboard-agent-grpc-port={ports[5]}",
                  f"--min-worker-port={low}", f"--max-worker-port={high}"]
        cmd = [sys.executable, "-c", _LAUNCHER, *common, *args]
        if private:
            os.makedirs(self.private_path, exist_ok=True)
            inner = " ".join(_quote(c) for c in cmd)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f"mount -t tmpfs -o size=64m tmpfs {_quote(self.private_path)} && exec {inner}"]
        before = set(self._matching_pids())
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        proc = subprocess.run(cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT, timeout=180)
        log.close()
        if proc.returncode != 0:
            tail = Path(self.dir, f"{name}.log").read_text()[-3000:]
            raise RuntimeError(f"`ray start` for node {name} failed (exit {proc.returncode}):\n{tail}")
        node = Node(name=name, pids=sorted(set(self._matching_pids()) - before),
                    private_path=self.private_path if private else "")
        node.node_id = self._node_id(node)
        self.nodes.append(node)
        self.save()
        return node

    def _matching_pids(self) -> list[int]:
        """Processes whose command line names our temp dir (every Ray daemon of this cluster)."""
        import psutil

        out = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                    out.append(proc.info["pid"])
            except (psutil.Error, TypeError):
                continue
        return out

    @staticmethod
    def _node_id(node: Node) -> str:
        import psutil

        for pid in node.pids:
            try:
                for part in psutil.Process(pid).cmdline():
                    if part.startswith("--node_id="):
                        return part.split("=", 1)[1]
            except psutil.Error:
                continue
        return ""

    def _wait_for_nodes(self, timeout_s: float) -> None:
        """Every node is registered and alive in the GCS (a small client of our own)."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))" % self.gcs_address)
        deadline = time.monotonic() + timeout_s
        while True:
            proc = subprocess.run([sys.executable, "-c", code], env=self._env(), capture_output=True, text=True,
                                  timeout=timeout_s)
            if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(len(self.nodes)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not show {len(self.nodes)} alive nodes:\n{proc.stderr[-2000:]}")
            time.sleep(1)

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one node's processes (and their children) at once: a node failure."""
        node = self.node(name)
        _signal_tree(node.pids, sig)
        self.nodes = [n for n in self.nodes if n.name != name]
        self.save()

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def stop(self) -> None:
        """Stop every process this cluster started (by PID; children too), then its temp dir."""
        pids = [pid for node in self.nodes for pid in node.pids]
        if self.temp_dir:
            pids += self._matching_pids()
        _signal_tree(pids, signal.SIGTERM, grace_s=10)
        self.nodes = []
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        if os.path.isdir(self.dir):
            self.save()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------------------------
    def save(self) -> None:
        Path(self.dir, "cluster.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: str) -> LocalCluster:
        path = Path(directory, "cluster.json")
        if not path.is_file():
            raise SystemExit(f"no cluster recorded in {directory} (no cluster.json); start one first")
        raw = json.loads(path.read_text())
        raw["nodes"] = [Node(**n) for n in raw.get("nodes", [])]
        return cls(**raw)

    def client_env(self) -> dict[str, str]:
        """The environment variables a client of this cluster needs (no token value in it)."""
        env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        if self.auth:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_file)
        return env


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _signal_tree(pids: list[int], sig: int, grace_s: float = 5.0) -> None:
    import psutil

    procs = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs[proc.pid] = proc
            for child in proc.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            continue
    for proc in procs.values():
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_cluster.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start a head and N worker nodes on 127.0.0.1")
    p.add_argument("--dir", default=".cluster", help="where cluster.json, the token and the logs go")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-node", type=float, default=1)
    p.add_argument("--head-cpus", type=float, default=None, help="CPUs of the head node (default: --cpus-per-node)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="logical GPUs per worker node")
    p.add_argument("--no-auth", action="store_true", help="start without token authentication")
    p.add_argument("--private-path", default="", help="make this path node-local on worker nodes (Linux, root)")
    for name in ("stop", "status"):
        q = sub.add_parser(name)
        q.add_argument("--dir", default=".cluster")
    q = sub.add_parser("kill-node", help="SIGKILL one node's processes (a node failure)")
    q.add_argument("name")
    q.add_argument("--dir", default=".cluster")
    args = parser.parse_args(argv)

    if args.command == "start":
        cluster = LocalCluster(dir=args.dir, workers=args.workers, cpus_per_node=args.cpus_per_node,
                               head_cpus=args.head_cpus, gpus_per_worker=args.gpus_per_worker,
                               auth=not args.no_auth, private_path=args.private_path).start()
        print(f"Ray cluster up: {len(cluster.nodes)} node(s) ({', '.join(n.name for n in cluster.nodes)})")
        print(f"  GCS address (run --address):    {cluster.gcs_address}")
        print(f"  dashboard / Jobs API (submit):  {cluster.dashboard_url}")
        if cluster.auth:
            print(f"  token file (--token-file):      {cluster.token_file}")
        print(f"  stop it with: python {sys.argv[0]} stop --dir {args.dir}")
        return 0
    cluster = LocalCluster.load(args.dir)
    if args.command == "stop":
        cluster.stop()
        print(f"stopped the cluster recorded in {args.dir}")
    elif args.command == "kill-node":
        cluster.kill_node(args.name)
        print(f"killed node {args.name}")
    else:
        print(json.dumps(asdict(cluster), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

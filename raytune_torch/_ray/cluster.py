"""Joining a Ray cluster, and what is checked before a run starts: Ray versions, resources, and
storage that every node sees."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray

from ..exceptions import ClusterError, ConfigError, ResourceError
from . import internals
from .version import driver_version_error

log = logging.getLogger("raytune_torch")


def connect(address: str, token_file: str | None = None) -> bool:
    """Join an existing Ray cluster at ``address`` ("auto", HOST:PORT of its GCS, or ray://).
    Returns True if joined now (the caller then calls ``shutdown``).

    The cluster is asked first, with a 5-second limit, whether it is there, accepts this
    client's token and runs this machine's Ray version (Ray itself retries for 20 seconds and
    then reports a generic connection error).

    Raises:
        ClusterError: a dashboard URL was given, nothing answers, the token is missing or wrong,
            or the cluster runs another Ray version.
    """
    from ..auth import client_env

    if ray.is_initialized():
        return False
    token = client_env(token_file)
    internals.reload_auth()  # the token and mode of this cluster, not those of an earlier one
    if address.startswith(("http://", "https://")):
        raise ClusterError(f"--address {address} is a dashboard (Jobs API) URL: `raytune-torch submit` uses it; "
                           f"`run --address` joins the cluster's GCS (HOST:6379, or 'auto' on the head node)")
    if not address.startswith("ray://"):
        gcs = _auto_address() if address == "auto" else address
        _probe_gcs(gcs, token)
        if gcs.split(":")[0] in ("127.0.0.1", "localhost"):
            # A cluster on loopback (cluster/local_cluster.py): this driver's node address must be
            # 127.0.0.1 too, or Ray looks for a raylet at the machine's address and hangs.
            internals.LOOPBACK.apply()
        address = gcs
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return True


def _auto_address() -> str:
    found = internals.auto_address()
    if not found:
        raise ClusterError("--address auto found no Ray cluster on this machine (no RAY_ADDRESS and no running "
                           "head node); start one (`ray start --head`) or give HOST:PORT")
    return found


def _probe_gcs(address: str, token: Any) -> None:
    """Fail fast and clearly: nothing answers, the token is refused, or another Ray version."""
    import grpc

    from ..auth import auth_headers, refused

    metadata = [(k.lower(), v) for k, v in auth_headers(token).items()]
    problem, version = internals.probe_gcs(address, metadata)
    if problem is ...:
        return
    if problem == grpc.StatusCode.UNAUTHENTICATED:
        raise refused(address, token)
    if problem is not None:
        raise ClusterError(f"no Ray cluster answers at {address} ({problem.name}); is it running, and is this "
                           f"the GCS address of its head node (HOST:6379)?")
    mismatch = driver_version_error(address, version)
    if mismatch is not None:
        raise mismatch


def _workers_per_node(nodes: list[dict], cpu: float, gpu: float) -> list[int]:
    """How many workers of ``{cpu, gpu}`` each node holds."""
    eps = 1e-9
    out = []
    for node in nodes:
        res = node["Resources"]
        fit = int(res.get("CPU", 0.0) / cpu + eps) if cpu > 0 else 10**6
        if gpu > 0:
            fit = min(fit, int(res.get("GPU", 0.0) / gpu + eps))
        out.append(fit)
    return out


def group_capacity(cpu: float, gpu: float, workers: int) -> int:
    """How many trials of ``workers`` x ``{cpu, gpu}`` the alive nodes hold at once (a trial's workers
    may spread over nodes)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return sum(_workers_per_node(nodes, cpu, gpu)) // max(workers, 1)


def check_resources(cpu: float, gpu: float, workers: int = 1) -> dict[str, Any]:
    """Fail before launch when the cluster cannot hold one trial: a node for a one-worker trial; for
    ``workers`` > 1, that many workers of ``{cpu, gpu}`` over the nodes (and a Ray that runs such
    trials). Returns what the cluster has, and ``groups``: how many trials run at once at most."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if workers > 1:
        return _check_group(nodes, cpu, gpu, workers)
    best = max(((n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes),
               default=(0.0, 0.0))
    fits = [n for n in nodes if n["Resources"].get("CPU", 0.0) >= cpu and n["Resources"].get("GPU", 0.0) >= gpu]
    if not fits:
        cpus, gpus = best
        fix = []
        if cpu > cpus:
            fix.append(f"lower resources.cpu (--cpus-per-trial) to at most {cpus:g}")
        if gpu > gpus:
            fix.append("set resources.gpu: 0 (--gpus-per-trial 0)" if gpus == 0 else
                       f"lower resources.gpu (--gpus-per-trial) to at most {gpus:g}")
        raise ResourceError(
            f"each trial asks for {{cpu: {cpu:g}, gpu: {gpu:g}}} but no node of the Ray cluster has that "
            f"much (largest: {best[0]:g} CPUs, {best[1]:g} GPUs over {len(nodes)} node(s)); "
            + "; ".join(fix or ["run on a cluster with larger nodes"])
        )
    total = ray.cluster_resources()
    return {"nodes": len(nodes), "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0), "groups": None}


def _check_group(nodes: list[dict], cpu: float, gpu: float, workers: int) -> dict[str, Any]:
    from .group import support_error

    problem = support_error()
    if problem is not None:
        raise ConfigError([problem])
    per_node = _workers_per_node(nodes, cpu, gpu)
    total = ray.cluster_resources()
    held = sum(per_node)
    if held < workers:
        shape = f"{{cpu: {cpu:g}, gpu: {gpu:g}}}"
        listing = ", ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0.0):g} CPU(s), "
                            f"{n['Resources'].get('GPU', 0.0):g} GPU(s) -> {k} worker(s)"
                            for n, k in zip(nodes, per_node))
        fix = [f"lower resources.workers (--workers-per-trial) to at most {held}" if held >= 2 else
               "use resources.workers: 1"]
        if gpu > 0 and total.get("GPU", 0.0) < workers * gpu:
            fix.append(f"lower resources.gpu to at most {total.get('GPU', 0.0) / workers:g}")
        if total.get("CPU", 0.0) < workers * cpu:
            fix.append(f"lower resources.cpu to at most {total.get('CPU', 0.0) / workers:g} per worker")
        raise ResourceError(
            f"each trial asks for {workers} workers of {shape} ({workers * cpu:g} CPUs, {workers * gpu:g} GPUs in "
            f"all), but the Ray cluster holds {held} such worker(s) at once ({listing}); " + "; ".join(fix))
    return {"nodes": len(nodes), "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0),
            "groups": held // workers}


def _probe_node(location: str, token: str, node_id: str) -> str | None:
    """On one node: read the driver's probe, write this node's. Returns None or the problem."""
    from ..storage import filesystem

    try:
        fs, root = filesystem(location)
        with fs.open_input_stream(f"{root}/.probe/driver") as fh:
            if fh.read().decode() != token:
                return "it sees another probe file than the driver wrote (a different directory of the same name)"
        with fs.open_output_stream(f"{root}/.probe/node-{node_id}") as out:
            out.write(token.encode())
    except FileNotFoundError:
        return "the driver's probe file is not there (the path is not shared with the driver's machine)"
    except Exception as exc:  # credentials, permissions, network: the node's own words
        return f"{type(exc).__name__}: {exc}"
    return None


def check_storage(run_dir: str, timeout_s: float = 60.0) -> int:
    """Write a probe to ``run_dir`` from the driver, then read it and write one back from every
    alive node (a zero-CPU task pinned to each node); the driver reads those back.

    Returns the number of nodes probed.

    Raises:
        ConfigError: some node cannot see or write the storage; the message names the nodes and,
            for a path, says to use a shared mount or an object-store URI.
    """
    import secrets

    import pyarrow.fs as pafs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ..storage import display, filesystem, is_uri, ray_storage

    fs, root = filesystem(run_dir)
    token = secrets.token_hex(8)
    try:
        fs.create_dir(f"{root}/.probe", recursive=True)
        with fs.open_output_stream(f"{root}/.probe/driver") as out:
            out.write(token.encode())
    except OSError as exc:
        raise ConfigError(f"storage {display(run_dir)!r} cannot be written from the driver: {exc}. Create the "
                          f"bucket or directory and check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                          f"AWS_ENDPOINT_URL for S3-compatible servers)") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(ray_storage(run_dir), token, n["NodeID"]) for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    problems = []
    for node in nodes:
        node_id, ref = node["NodeID"], refs[node["NodeID"]]
        name = f"{node['NodeManagerAddress']} (node {node_id[:8]})"
        if ref not in ready:
            problems.append(f"{name}: no answer in {timeout_s:.0f}s")
            continue
        problem = ray.get(ref)
        if problem is None:
            info = fs.get_file_info(f"{root}/.probe/node-{node_id}")
            if info.type != pafs.FileType.File:
                problem = "it wrote its probe where the driver cannot read it (a directory of its own)"
        if problem:
            problems.append(f"{name}: {problem}")
    with contextlib.suppress(OSError):
        fs.delete_dir(f"{root}/.probe")
    if problems:
        fix = ("use a path every node mounts (NFS, EFS, a Kubernetes ReadWriteMany volume) or an object-store URI "
               "(storage: s3://bucket/runs, gs://bucket/runs)" if not is_uri(run_dir) else
               "give every node the storage credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
               "AWS_ENDPOINT_URL, or an instance profile)")
        raise ConfigError(f"storage {display(run_dir)!r} is not shared by every node of the cluster: "
                          + "; ".join(problems) + f". Trials on those nodes could not save checkpoints there: {fix}")
    return len(nodes)

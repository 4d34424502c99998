"""Redis as production runs it, from the Debian ``redis-server`` binary: a Sentinel setup
(one primary, one replica, one sentinel) and a 3-primary Redis Cluster.

Each server listens on 127.0.0.1 on a free port and keeps its files in a directory given
by the caller; nothing is shared with the stack. Debian ships no ``redis-sentinel``
binary: ``redis-server sentinel.conf --sentinel`` is the sentinel. Only the standard
library and :mod:`outbox_dev.scratch`'s helpers (no redis-py, no pytest), so a script can
import this module too.

Failover timings are small on purpose (``down-after-milliseconds`` 500, ``failover-timeout``
2000): a killed primary is replaced in about a second here.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from outbox_dev import stack
from outbox_dev.scratch import HOST, free_port, wait_port

__all__ = ["RedisNode", "ScratchCluster", "ScratchSentinel", "ScratchTlsRedis"]

SERVICE = "outbox-primary"
"""The service name the sentinel monitors (``redis+sentinel://.../outbox-primary``)."""


def _binary(name: str) -> str:
    found = stack.find_binary(name)
    assert found is not None, f"{name} is not installed (./dev/stack start installs it)"
    return found


def cli(port: int, *args: str, within: float = 10.0) -> str:
    """``redis-cli -p PORT ARGS``: its output, raising with it when the command fails."""
    done = subprocess.run(
        [_binary("redis-cli"), "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )
    out = done.stdout.strip()
    if done.returncode != 0 or out.startswith(("ERR", "(error)")):
        raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {out} {done.stderr.strip()}")
    return out


def _wait(check: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {within}s")


class RedisNode:
    """One ``redis-server`` process (a primary, a replica, a sentinel or a cluster node)."""

    def __init__(self, workdir: Path, name: str, conf: list[str], *, sentinel: bool = False):
        self.port = free_port()
        while self.port > 55_535:  # cluster nodes need port + 10000 to be a port
            self.port = free_port()
        self.dir = workdir / name
        self.name = name
        self.conf = [f"port {self.port}", f"bind {HOST}", f"dir {self.dir}", *conf]
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        """What the server wrote to its log so far."""
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, *extra: str) -> None:
        """Start it (its config file is written once, then kept: a sentinel rewrites it);
        ``extra``: more ``--name value`` arguments for this start only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        if not conf.exists():
            conf.write_text("\n".join([*self.conf, "save ''", "appendonly no"]) + "\n")
        args = [_binary("redis-server"), str(conf), *extra]
        args += ["--sentinel"] if self.sentinel else []
        with open(self.dir / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_port(self.port, within=15, what=f"redis-server {self.name}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log:\n{self.log}") from None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def running(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


class ScratchSentinel:
    """A primary, a replica of it and one sentinel monitoring them as :data:`SERVICE`."""

    def __init__(self, workdir: Path) -> None:
        # A full sync waits repl-diskless-sync-delay (5 s) for more replicas: none will come.
        quick = ["repl-diskless-sync-delay 0"]
        self.primary = RedisNode(workdir, "primary", quick)
        self.replica = RedisNode(workdir, "replica", quick)
        self.replica.conf.append(f"replicaof {HOST} {self.primary.port}")
        self.sentinel = RedisNode(
            workdir,
            "sentinel",
            [
                f"sentinel monitor {SERVICE} {HOST} {self.primary.port} 1",
                f"sentinel down-after-milliseconds {SERVICE} 500",
                f"sentinel failover-timeout {SERVICE} 2000",
                f"sentinel parallel-syncs {SERVICE} 1",
            ],
            sentinel=True,
        )

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:PORT/outbox-primary/0``."""
        return f"redis+sentinel://{HOST}:{self.sentinel.port}/{SERVICE}/0"

    def start(self) -> None:
        """Start the three and wait until the sentinel knows the replica."""
        for node in (self.primary, self.replica, self.sentinel):
            node.start()
        _wait(
            lambda: "master_link_status:up" in cli(self.replica.port, "INFO", "replication"),
            within=15,
            what="the replica in sync",
        )
        _wait(
            lambda: cli(self.sentinel.port, "SENTINEL", "REPLICAS", SERVICE).strip() != "",
            within=15,
            what="the sentinel sees the replica",
        )

    def master_port(self) -> int:
        """The primary's port, as the sentinel names it now."""
        out = cli(self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(out.split()[-1])

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER``: what redis-py reads (GET-MASTER-ADDR-BY-NAME names the
        promoted replica before the failover ends; this names it only after)."""
        lines = cli(self.sentinel.port, "SENTINEL", "MASTER", SERVICE).splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=False))

    def kill_primary_and_promote(self, within: float = 20.0) -> RedisNode:
        """SIGKILL the primary and wait until the sentinel names the replica; the new one."""
        old = self.primary if self.master_port() == self.primary.port else self.replica
        new = self.replica if old is self.primary else self.primary
        old.kill()
        _wait(
            lambda: (
                self.master_state().get("port") == str(new.port)
                and self.master_state().get("flags") == "master"
                and "role:master" in cli(new.port, "INFO", "replication")
            ),
            within=within,
            what=f"the sentinel promotes {new.name}",
        )
        return new

    def rejoin(self, node: RedisNode, within: float = 20.0) -> None:
        """Start a killed node again as a replica of the primary now, and wait until it is
        in sync and the sentinel counts it (so the next failover has a replica)."""
        node.start("--replicaof", HOST, str(self.master_port()))
        _wait(
            lambda: "master_link_status:up" in cli(node.port, "INFO", "replication"),
            within=within,
            what=f"{node.name} in sync again",
        )

        def counted() -> bool:
            out = cli(self.sentinel.port, "SENTINEL", "REPLICAS", SERVICE).splitlines()
            fields = dict(zip(out[::2], out[1::2], strict=False))
            return fields.get("port") == str(node.port) and fields.get("flags") == "slave"

        _wait(counted, within=within, what=f"the sentinel counts {node.name} as a replica")

    def stop(self) -> None:
        """Kill every process."""
        for node in (self.sentinel, self.replica, self.primary):
            node.kill()


class ScratchCluster:
    """Three cluster-mode primaries with every slot assigned, and with ``replicas=True`` a
    replica of each (six nodes), so a killed primary fails over."""

    def __init__(self, workdir: Path, *, replicas: bool = False) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisNode(
                workdir,
                f"node{n}",
                [
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    # Small, so a killed primary's replica takes over in about 2 s here.
                    "cluster-node-timeout 1000",
                    "repl-diskless-sync-delay 0",
                    # The bus port is PORT + 10000 unless set: a free one of its own.
                    f"cluster-port {free_port()}",
                ],
            )
            for n in range(6 if replicas else 3)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2/``: two of the nodes."""
        hosts = ",".join(f"{HOST}:{n.port}" for n in self.nodes[:2])
        return f"redis+cluster://{hosts}/"

    def start(self) -> None:
        """Start the nodes, create the cluster, wait until every node says it is ok."""
        for node in self.nodes:
            node.start()
        cli(
            self.nodes[0].port,
            "--cluster",
            "create",
            *(f"{HOST}:{n.port}" for n in self.nodes),
            "--cluster-replicas",
            "1" if self.replicas else "0",
            "--cluster-yes",
            within=60,
        )
        self.wait_ok()

    def wait_ok(self, within: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok``."""
        for node in self.nodes:
            if node.running():
                _wait(
                    lambda node=node: "cluster_state:ok" in cli(node.port, "CLUSTER", "INFO"),
                    within=within,
                    what=f"{node.name} cluster_state:ok",
                )

    def primary_of(self, key: str) -> RedisNode:
        """The node serving ``key``'s slot now."""
        slot = int(cli(self.live().port, "CLUSTER", "KEYSLOT", key))
        for node in self.nodes:
            if node.running():
                info = cli(node.port, "ROLE").split()
                if info and info[0] == "master" and self._serves(node, slot):
                    return node
        raise RuntimeError(f"no running primary serves slot {slot}")

    def _serves(self, node: RedisNode, slot: int) -> bool:
        for line in cli(node.port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "myself" in fields[2]:
                for part in fields[8:]:
                    low, _, high = part.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return True
        return False

    def live(self) -> RedisNode:
        """A running node."""
        return next(n for n in self.nodes if n.running())

    def kill_primary_of(self, key: str, within: float = 30.0) -> RedisNode:
        """SIGKILL the primary serving ``key`` and wait until its replica serves it."""
        old = self.primary_of(key)
        old.kill()

        def promoted() -> bool:
            try:
                return self.primary_of(key) is not old
            except RuntimeError:
                return False

        _wait(promoted, within=within, what=f"a replica takes over from {old.name}")
        self.wait_ok(within)
        return self.primary_of(key)

    def move_slot_of(self, key: str, *, pause: float = 0.3) -> RedisNode:
        """Migrate ``key``'s slot (and its keys) to another primary, as ``redis-cli
        --cluster reshard`` does, one slot: IMPORTING/MIGRATING, MIGRATE the keys, pause
        ``pause`` seconds in the middle (clients meet ASK/TRYAGAIN), then SETSLOT NODE
        everywhere. Returns the new owner."""
        slot = cli(self.live().port, "CLUSTER", "KEYSLOT", key)
        src = self.primary_of(key)
        primaries = [
            n for n in self.nodes if n.running() and cli(n.port, "ROLE").split()[0] == "master"
        ]
        dst = next(n for n in primaries if n is not src)
        src_id, dst_id = cli(src.port, "CLUSTER", "MYID"), cli(dst.port, "CLUSTER", "MYID")
        cli(dst.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        cli(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = cli(src.port, "CLUSTER", "GETKEYSINSLOT", slot, "1000").split()
        if keys:  # half now, half after the pause: the slot is split meanwhile
            half = keys[: len(keys) // 2] or keys
            cli(src.port, "MIGRATE", HOST, str(dst.port), "", "0", "5000", "KEYS", *half)
        time.sleep(pause)
        rest = cli(src.port, "CLUSTER", "GETKEYSINSLOT", slot, "1000").split()
        if rest:
            cli(src.port, "MIGRATE", HOST, str(dst.port), "", "0", "5000", "KEYS", *rest)
        for node in (dst, src, *(n for n in primaries if n not in (src, dst))):
            cli(node.port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()
        _wait(lambda: self.primary_of(key) is dst, within=15, what=f"{dst.name} serves {key}")
        return dst

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.kill()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_certificates(where: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    where.mkdir(parents=True, exist_ok=True)
    files = {n: where / f"{n}.pem" for n in ("ca", "ca_key", "server", "server_key")}
    files |= {n: where / f"{n}.pem" for n in ("client", "client_key")}
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *curve, "-keyout", str(files["ca_key"]), "-out", str(files["ca"]),
             "-days", "2", "-subj", "/CN=outbox-test-ca")  # fmt: skip
    san = where / "san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        csr = where / f"{name}.csr"
        _openssl("req", *curve, "-keyout", str(files[f"{name}_key"]), "-out", str(csr),
                 "-subj", f"/CN={name}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey",
                 str(files["ca_key"]), "-CAcreateserial", "-out", str(files[name]), "-days",
                 "2", "-extfile", str(san))  # fmt: skip
    return files


class ScratchTlsRedis:
    """One redis-server that speaks only TLS and wants a client certificate."""

    def __init__(self, workdir: Path) -> None:
        self.certs = make_certificates(workdir / "certs")
        c = self.certs
        self.node = RedisNode(workdir, "tls", [])
        self.node.conf += [
            "port 0",  # no plain port: the last port directive wins
            f"tls-port {self.node.port}",
            f"tls-cert-file {c['server']}",
            f"tls-key-file {c['server_key']}",
            f"tls-ca-cert-file {c['ca']}",
            "tls-auth-clients yes",
        ]

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:PORT/0?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``."""
        c = self.certs
        return (
            f"rediss://{HOST}:{self.node.port}/0?ssl_ca_certs={c['ca']}"
            f"&ssl_certfile={c['client']}&ssl_keyfile={c['client_key']}"
        )

    def start(self) -> None:
        """Start it."""
        self.node.start()

    def stop(self) -> None:
        """Kill it."""
        self.node.kill()


def main(argv: list[str]) -> int:
    """``python -m outbox_dev.redis_ha sentinel|cluster|tls``: run one setup until Ctrl-C."""
    kinds = {"sentinel": ScratchSentinel, "cluster": ScratchCluster, "tls": ScratchTlsRedis}
    if len(argv) != 1 or argv[0] not in kinds:
        print(f"usage: python -m outbox_dev.redis_ha {'|'.join(kinds)}", file=sys.stderr)
        return 2
    setup = kinds[argv[0]](Path(tempfile.mkdtemp(prefix=f"redis-{argv[0]}-")))
    try:
        setup.start()
        print(f"OUTBOX_REDIS_URL={setup.url}  (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        setup.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

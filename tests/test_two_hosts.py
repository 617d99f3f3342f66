"""``convert-to-tiff-mpi`` across two hosts, for real: two Linux network namespaces joined by a
veth pair, each with its own address and host name, sharing the file system; the ranks talk
over TCP.

How the second host is reached: Open MPI's ``mpirun`` starts its daemon on every other host
through ssh, and ``--prtemca plm_ssh_agent`` replaces ssh by any program called as
``AGENT HOST COMMAND``. The agent here runs COMMAND inside the network namespace HOST, in a UTS
namespace of its own whose host name is HOST (with the machine's host name both namespaces
would look like one node to Open MPI). ``mpirun`` itself runs inside the first namespace, so
that it reaches the second one over the veth pair only.

The tests skip, with the reason, where namespaces cannot be made (not root, no
CAP_NET_ADMIN, no ``ip`` or ``unshare``). The namespaces are removed after each test, also
when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from cryotiff import cli
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.write import write_mrc_movie

from .helpers import HANG_SECONDS, read_tiff_frames

BIN_DIR = Path(sys.executable).parent
MPIRUN = BIN_DIR / "mpirun"
#: Only a hang must fail (helpers.HANG_SECONDS): a shared 2-core machine can be slow.
TIMEOUT_SECONDS = HANG_SECONDS
#: The subnet of the veth pair (private; it exists only inside the two namespaces).
SUBNET = "10.213.7"

AGENT_SCRIPT = """\
#!/bin/sh
# Stands in for ssh as Open MPI calls it: AGENT [OPTIONS] HOST COMMAND...
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host=$1
shift
exec ip netns exec "$host" unshare --uts sh -c "hostname $host && $*"
"""


def _ip(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30)


def _why_no_namespaces() -> str | None:
    if not MPIRUN.exists():
        return f"no mpirun next to {sys.executable} (pip install .[mpi])"
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"no {tool!r} command (iproute2, util-linux) to make network namespaces"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    return None


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class TwoHosts:
    """Two network namespaces ``hosts[0]`` and ``hosts[1]`` that Open MPI takes for two nodes."""

    hosts: tuple[str, str]
    agent: Path

    def command(self, arguments: list[str], n_ranks: int = 2) -> list[str]:
        """``mpirun ... convert-to-tiff-mpi ARGS`` run inside the first namespace with its
        host name, one rank per host."""
        mpirun = [
            str(MPIRUN), "--allow-run-as-root", "-np", str(n_ranks),
            "--host", ",".join(self.hosts), "--map-by", "node",
            "--prtemca", "plm_ssh_agent", str(self.agent),
            "--mca", "btl", "tcp,self",  # between the hosts: TCP (no shared memory)
            sys.executable, "-m", "cryotiff.mpi", *arguments,
        ]
        inner = " ".join(shlex.quote(part) for part in mpirun)
        first = self.hosts[0]
        return ["ip", "netns", "exec", first, "unshare", "--uts", "sh", "-c", f"hostname {first} && exec {inner}"]

    def popen(self, arguments: list[str], cwd: Path) -> subprocess.Popen:
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
        return subprocess.Popen(self.command(arguments), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, arguments: list[str], cwd: Path) -> Completed:
        return finish(self.popen(arguments, cwd))

    def rank_pids(self, host: str) -> list[int]:
        """The ``convert-to-tiff-mpi`` processes running in ``host``'s namespace."""
        listed = _ip("netns", "pids", host).stdout.split()
        pids = []
        for pid in listed:
            try:
                command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"cryotiff.mpi" in command_line:
                pids.append(int(pid))
        return pids


def finish(process: subprocess.Popen, timeout: float = TIMEOUT_SECONDS) -> Completed:
    """Wait for the job; a hang kills every process it started and fails the test."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the two-host job hung for {timeout} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return Completed(process.returncode, stdout, stderr)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[TwoHosts]:
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid()}"
    hosts = (f"cryotiff{tag}a", f"cryotiff{tag}b")
    veth = (f"ctv{tag}a", f"ctv{tag}b")  # interface names have at most 15 characters
    made: list[str] = []
    try:
        for host in hosts:
            completed = _ip("netns", "add", host)
            if completed.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {completed.stderr.strip()}")
            made.append(host)
        steps = [
            ("link", "add", veth[0], "type", "veth", "peer", "name", veth[1]),
            ("link", "set", veth[0], "netns", hosts[0]),
            ("link", "set", veth[1], "netns", hosts[1]),
        ]
        for k, (host, interface) in enumerate(zip(hosts, veth)):
            steps += [
                ("-n", host, "addr", "add", f"{SUBNET}.{k + 1}/24", "dev", interface),
                ("-n", host, "link", "set", interface, "up"),
                ("-n", host, "link", "set", "lo", "up"),
            ]
        for step in steps:
            completed = _ip(*step)
            if completed.returncode != 0:
                pytest.skip(f"cannot join the namespaces by a veth pair (ip {' '.join(step)}): "
                            f"{completed.stderr.strip()}")
        agent = tmp_path / "netns-agent.sh"
        agent.write_text(AGENT_SCRIPT)
        agent.chmod(0o755)
        yield TwoHosts(hosts, agent)
    finally:
        for host in made:
            for pid in TwoHosts(hosts, Path()).rank_pids(host):  # left over by a failed test
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "delete", host)  # removes its end of the veth pair, and so the pair
        _ip("link", "delete", veth[0])  # still in this namespace if moving it failed


def write_k2(path: Path, n_frames: int, seed: int, shape_yx: tuple[int, int]) -> np.ndarray:
    frames = counting_frames(n_frames, shape_yx=shape_yx, dtype=np.int8, seed=seed)
    write_mrc_movie(path, frames, 0, pixel_size_angstrom=1.06)
    return frames


def report_movies(path: Path) -> dict[str, dict]:
    return {entry["source"]: entry for entry in json.loads(path.read_text())["movies"]}


# --------------------------------------------------------------------------- tests


def test_two_hosts_convert_every_movie_exactly(two_hosts: TwoHosts, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Both hosts convert (rank 0 too); every TIFF decodes to its movie and is byte-identical to
    the one a single process writes."""
    movies = tmp_path / "Movies"
    movies.mkdir()
    expected = {f"k2_{k}": write_k2(movies / f"k2_{k}.mrc", 10, seed=k, shape_yx=(512, 512)) for k in range(6)}
    falcon = falcon_frames(6, shape_yx=(256, 256), seed=9)
    write_mrc_movie(movies / "falcon.mrc", falcon, 6)
    expected["falcon"] = falcon
    # A slow codec (about 1 s per movie), so that rank 0, which converts too, cannot finish every
    # movie while the second host's rank is still starting: with the default codec (0.1 s per
    # movie) rank 0 once converted all seven before rank 1 had asked for one (a loaded machine,
    # CI). Making rank 0 wait for the other ranks would slow every real run; the test gives it
    # enough work instead.
    options = ["--compression", "deflate", "--deflate_level", "12", "--j", "2"]

    completed = two_hosts.run(["--i", "Movies", "--o", "two_hosts", *options, "--report", "report.json"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert f"Movies converted: {len(expected)}, skipped: 0, failed: 0" in completed.stdout
    entries = report_movies(tmp_path / "report.json")
    assert {entry["details"]["mpi_host"] for entry in entries.values()} == set(two_hosts.hosts), entries
    assert {entry["details"]["mpi_rank"] for entry in entries.values()} == {0, 1}

    monkeypatch.chdir(tmp_path)
    assert cli.main(["--i", "Movies", "--o", "one_process", *options]) == 0
    for name, frames in expected.items():
        written = tmp_path / "two_hosts" / "Movies" / f"{name}.tif"
        np.testing.assert_array_equal(read_tiff_frames(written), frames)
        assert written.read_bytes() == (tmp_path / "one_process" / "Movies" / f"{name}.tif").read_bytes()
    star = (tmp_path / "two_hosts" / "movies.star").read_text()
    assert all(f"two_hosts/Movies/{name}.tif" in star for name in expected)
    # Both hosts added their TIFFs to the one manifest of --o (appended under a lock).
    from cryotiff.manifest import read_manifest

    assert sorted(read_manifest(tmp_path / "two_hosts")) == sorted(f"Movies/{name}.tif" for name in expected)


def test_a_rank_killed_on_one_host_ends_the_job_with_a_clear_error(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """``kill -9`` of the rank on the second host while both hosts convert: the job ends (no
    hang) with a non-zero status and a line naming the rank and its host; no ``.tif`` that
    exists is incomplete or wrong."""
    sources = {f"m{k}": write_k2(tmp_path / f"m{k}.mrc", 24, seed=k, shape_yx=(1024, 1024)) for k in range(4)}
    process = two_hosts.popen(["--i", "m*.mrc", "--o", "out", "--compression", "deflate", "--deflate_level", "12"],
                              tmp_path)
    try:
        started = [process.stdout.readline() for _ in range(2)]  # both hosts are converting a movie
        assert all(line.startswith("Processing ") for line in started), started
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not (pids := two_hosts.rank_pids(two_hosts.hosts[1])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        completed = finish(process)  # a hang fails
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    # cryotiff's line (rank 0 noticed first) or mpirun's (it noticed first and stopped rank 0).
    ours = [line for line in completed.stderr.splitlines()
            if f"ERROR: MPI rank 1 (on {two_hosts.hosts[1]}) stopped while converting m" in line]
    mpiruns = "process rank 1" in output and two_hosts.hosts[1] in output and "signal 9" in output
    assert len(ours) == 1 or mpiruns, output
    assert "Traceback" not in output, output
    for tif in (tmp_path / "out").rglob("*.tif"):
        np.testing.assert_array_equal(read_tiff_frames(tif), sources[tif.stem])


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_srun_tasks_that_mpi_sees_as_single_processes_are_refused(tmp_path: Path) -> None:
    """``srun`` without PMIx starts each task as "rank 0 of 1": every one would convert every
    movie into the same files. Such a task refuses to start."""
    write_k2(tmp_path / "m.mrc", 2, seed=0, shape_yx=(64, 64))
    env = dict(os.environ, SLURM_STEP_NUM_TASKS="3", SLURM_PROCID="1")
    for name in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        env.pop(name, None)
    completed = subprocess.run([sys.executable, "-m", "cryotiff.mpi", "--i", "m.mrc", "--o", "out"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 2
    assert completed.stderr.count("srun started 3 tasks, but MPI sees each as a single process") == 1
    assert "srun --mpi=pmix" in completed.stderr
    assert not (tmp_path / "out").exists()

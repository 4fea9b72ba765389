"""The atlas under torchrun as it is: restarts after a kill (bad timing on purpose), two "nodes" on one
rendezvous, other world sizes on a rerun, a rank's error ending the group once, the data pass resumed.

Every run is a subprocess in a session of its own, killed whole at the end of its test; each gets
a free port for its rendezvous. The toy model's hooks (environment variables, below) kill a rank,
make it raise, hang or start late at an exact point, so the timing is the bad one every time.
"""

import json
import os
from pathlib import Path
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_atlas import OPTIONS, TOY, _files
import torch

# TOY_KILL=rank:attempt:call  SIGKILL that rank in that torchrun attempt at its call-th optimizing forward
# TOY_RAISE=rank:call         that rank's call-th optimizing forward raises (every attempt)
# TOY_HANG=rank:call          that rank's call-th optimizing forward sleeps for an hour
# TOY_LATE=rank:attempt:secs  that rank starts late (its model is slow to make) in that attempt
ELASTIC = """
import os
import signal
import time

import torch

from toy import make_wide

RANK = os.environ.get("RANK", "0")
ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")


def _matches(name, *fields):
    return any(spec.split(":")[: len(fields)] == list(fields) for spec in os.environ.get(name, "").split(","))


def make():
    for spec in os.environ.get("TOY_LATE", "").split(","):
        if spec and spec.split(":")[:2] == [RANK, ATTEMPT]:
            time.sleep(float(spec.split(":")[2]))
    model = make_wide()
    calls = [0]

    def hook(module, args):
        if not torch.is_grad_enabled():
            return
        calls[0] += 1
        call = str(calls[0])
        if _matches("TOY_KILL", RANK, ATTEMPT, call):
            os.kill(os.getpid(), signal.SIGKILL)
        if _matches("TOY_RAISE", RANK, call):
            raise RuntimeError("toy failure " + "on rank " + RANK)
        if _matches("TOY_HANG", RANK, call):
            time.sleep(3600)

    model.register_forward_pre_hook(hook)
    return model
"""
RUN = [*OPTIONS, "--batch-size", "2"]
UNITS = 24 + 6 + 5 + 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("elastic")
    (folder / "toy.py").write_text(TOY)
    (folder / "elastic.py").write_text(ELASTIC)
    return folder


def _env(folder: Path, **extra) -> dict:
    source = str(Path(__file__).resolve().parents[2] / "src")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), source]),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _atlas_args(out: Path) -> list[str]:
    return ["-m", "featvis", "atlas", "--model", "elastic:make", *RUN, "--out", str(out)]


def _torchrun(*args: str, nodes: str = "1", procs: int = 2, restarts: int = 0, port: int | None = None):
    torchrun = Path(sys.executable).with_name("torchrun")
    port = port or _free_port()
    return [
        str(torchrun),
        "--nnodes",
        nodes,
        "--nproc-per-node",
        str(procs),
        "--max-restarts",
        str(restarts),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"localhost:{port}",
        "--rdzv-id",
        "atlas-test",
        *args,
    ]


def _run(commands: list[list[str]], env: dict, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side (each in a session of its own); none outlives this call."""
    processes = [
        subprocess.Popen(
            c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        for c in commands
    ]
    done = []
    try:
        deadline = time.monotonic() + timeout
        for command, process in zip(commands, processes):
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    return done


def _drawn(out: Path) -> list[tuple[int, int, str, int]]:
    """(attempt, rank, layer, unit) of every unit written, from the atlas's timings."""
    return [
        (entry["attempt"], entry["rank"], entry["layer"], unit)
        for log in sorted((out / "timings").glob("*.jsonl"))
        for entry in map(json.loads, log.read_text().splitlines())
        for unit in entry["unit_ids"]
    ]


def _same_files(out: Path, reference: Path) -> None:
    assert not list(out.rglob("*.part")) and not (out / "checkpoints").exists()
    assert _files(out) == _files(reference)  # every PNG, record, page and the manifest: bitwise


@pytest.fixture(scope="module")
def reference(folder) -> Path:
    out = folder / "one"
    command = [sys.executable, *_atlas_args(out)]
    subprocess.run(command, env=_env(folder), check=True, capture_output=True, timeout=300)
    return out


def test_a_restarted_group_never_reads_the_keys_of_the_dead_one(monkeypatch):
    """The dead group's generation and welcome are in the store; the new rank 1 reads them before
    the new rank 0 (late) writes its own: it must wait for the new generation, not join the old one."""
    from featvis.site import group

    port = _free_port()
    server = torch.distributed.TCPStore("localhost", port, 2, True, wait_for_workers=False)
    server.set("featvis/generation", "dead")
    server.set("featvis/dead/welcome/1", "a process that is gone")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    groups = {}

    def join(rank: int, late: float) -> None:
        time.sleep(late)
        groups[rank] = group.join(rank, 2)

    threads = [threading.Thread(target=join, args=(1, 0.0)), threading.Thread(target=join, args=(0, 1.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    generation = server.get("featvis/generation").decode()
    assert generation != "dead" and set(groups) == {0, 1}
    groups[1].store.set("hello", "from rank 1")  # the two ranks share the new generation's keys
    assert groups[0].store.get("hello") == b"from rank 1"
    assert server.check([f"featvis/{generation}/hello"])


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_restarted_by_torchrun_and_no_finished_unit_is_drawn_again(
    folder, reference
):
    out = folder / "killed"
    # attempt 0: rank 1 is killed at its 12th step (its third batch); attempt 1: rank 0 starts 3 s
    # late, so the new rank 1 finds the dead group's keys in torchrun's store before any new one
    env = _env(folder, TOY_KILL="1:0:12", TOY_LATE="0:1:3")
    (done,) = _run([_torchrun(*_atlas_args(out), restarts=2)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr  # the kill happened, and torchrun restarted the group
    drawn = _drawn(out)
    assert {attempt for attempt, *_ in drawn} == {0, 1}
    units = [(layer, unit) for _, _, layer, unit in drawn]
    assert len(units) == len(set(units)) == UNITS  # each unit written once over both attempts
    _same_files(out, reference)


@pytest.mark.slow
def test_two_nodes_on_one_rendezvous_write_the_files_of_one_process(folder, reference):
    out = folder / "nodes"
    port = _free_port()
    node = _torchrun(*_atlas_args(out), nodes="1:2", procs=1, restarts=1, port=port)
    first, second = _run([node, node], _env(folder))
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert {rank for _, rank, _, _ in _drawn(out)} == {0, 1}  # one rank on each "node"
    _same_files(out, reference)


@pytest.mark.slow
def test_a_rerun_on_another_world_size_reuses_every_finished_unit(folder, reference):
    out = folder / "resized"
    env = _env(folder, TOY_KILL="1:0:12,2:0:12")
    for procs in (2, 3):  # cut short twice: rank 1 of 2, then rank 2 of 3, killed
        (done,) = _run([_torchrun(*_atlas_args(out), procs=procs)], env)
        assert done.returncode != 0 and "exitcode: -9" in done.stderr, done.stderr[-2000:]
    before = _drawn(out)
    (done,) = _run([[sys.executable, *_atlas_args(out)]], _env(folder))  # and finished by one process
    assert done.returncode == 0, done.stderr[-2000:]
    made, kept = map(int, re.search(r"(\d+) units made, (\d+) already there", done.stderr).groups())
    assert kept == len(before) and made == UNITS - len(before) > 0
    units = [(layer, unit) for _, _, layer, unit in _drawn(out)]
    assert len(units) == len(set(units)) == UNITS
    _same_files(out, reference)


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_group_at_once_with_its_error_shown_once(folder):
    out = folder / "raises"
    env = _env(folder, TOY_RAISE="1:3", FEATVIS_ATLAS_TIMEOUT="600")
    start = time.monotonic()
    (done,) = _run([_torchrun(*_atlas_args(out), restarts=2)], env)
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.count("toy failure on rank 1") == 1, output[-3000:]  # the error, once
    assert "not retried" in output  # the restarts stop at once: a Python error would repeat
    assert seconds < 120  # not the collectives' timeout (600 s): the other rank stops at its next wait


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_group_after_the_timeout(folder):
    out = folder / "hangs"
    env = _env(folder, TOY_HANG="1:3", FEATVIS_ATLAS_TIMEOUT="5")
    (done,) = _run([_torchrun(*_atlas_args(out))], env, timeout=300)
    assert done.returncode != 0
    assert re.search(r"rank 0: 1 of 2 ranks reached 'every unit drawn' within 5 s", done.stderr), done.stderr[
        -3000:
    ]
    assert "FEATVIS_ATLAS_TIMEOUT" in done.stderr


DATA_SCRIPT = """
import os
import signal
import sys

import torch

import featvis
from toy import make_wide

READS = sys.argv[2]
RANK = os.environ.get("RANK", "0")
ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")


class Logged(torch.utils.data.Dataset):
    # 1,000 small images; every read is logged, and rank 1 of the first attempt is killed at its 400th
    def __init__(self):
        self.images = torch.rand(1000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.reads += 1
        if (RANK, ATTEMPT) == ("1", "0") and self.reads == 400:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(READS, "a") as log:
            log.write(f"{ATTEMPT} {RANK} {index}\\n")
        return self.images[index]


featvis.atlas(make_wide(), sys.argv[1], ["fc"], data=Logged(), examples=3, size=16, max_iter=2, views=1,
              input_range=(0.0, 1.0), progress=False)
"""


@pytest.mark.slow
def test_the_data_pass_resumes_from_each_ranks_checkpoint_after_a_kill(folder, tmp_path):
    script = folder / "data_atlas.py"
    script.write_text(DATA_SCRIPT)
    reads = tmp_path / "reads.txt"
    one = _run(
        [[sys.executable, str(script), str(tmp_path / "one"), str(tmp_path / "one-reads.txt")]], _env(folder)
    )
    assert one[0].returncode == 0, one[0].stderr[-2000:]
    (done,) = _run([_torchrun(str(script), str(tmp_path / "two"), str(reads), restarts=1)], _env(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr
    logged = [tuple(map(int, line.split())) for line in reads.read_text().splitlines()]
    share = list(range(1, 1000, 2))  # rank 1's items, in order
    before = [i for attempt, rank, i in logged if (attempt, rank) == (0, 1)]
    after = [i for attempt, rank, i in logged if (attempt, rank) == (1, 1)]
    assert before == share[:399]  # killed at its 400th read, after a checkpoint at 320 (10 batches of 32)
    assert not set(after) & set(share[:320])  # what the checkpoint holds is not read again
    assert set(share[320:]) <= set(after)
    examples = sorted((tmp_path / "one").glob("units/fc/*.examples.*"))
    assert len(examples) == 6
    for path in examples:
        assert (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes() == path.read_bytes()


def test_a_small_memory_gives_smaller_batches_and_the_same_images(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from torch import nn

    import featvis

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3)).eval()
    options = dict(size=16, max_iter=3, views=1, input_range=(0.0, 1.0), progress=False)
    monkeypatch.delenv("FEATVIS_MEMORY", raising=False)
    featvis.atlas(model, tmp_path / "roomy", ["0", "2"], **options)
    monkeypatch.setenv("FEATVIS_MEMORY", "64K")  # about 12 KB of activations per image: one at a time
    featvis.atlas(model, tmp_path / "tight", ["0", "2"], **options)

    def batch_size(site: Path) -> int:
        return json.loads((site / "atlas.json").read_text())["settings"]["batch_size"]

    assert (batch_size(tmp_path / "roomy"), batch_size(tmp_path / "tight")) == (4, 1)
    pictures = sorted((tmp_path / "roomy").glob("units/*/unit_?????.png"))
    assert len(pictures) == 6 + 5
    for picture in pictures:
        tight = tmp_path / "tight" / picture.relative_to(tmp_path / "roomy")
        a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (picture, tight))
        assert np.abs(a - b).max() <= 1, picture  # the same image, up to the batch's float rounding
    monkeypatch.setenv("FEATVIS_MEMORY", "lots")
    with pytest.raises(featvis.FeatvisValueError, match="FEATVIS_MEMORY='lots'"):
        featvis.atlas(model, tmp_path / "bad", ["0"], **options)


def test_a_bad_timeout_is_an_error_naming_it(monkeypatch):
    from featvis.site.group import TIMEOUT_ENV, timeout_seconds

    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(featvis_error(), match="FEATVIS_ATLAS_TIMEOUT='soon'"):
        timeout_seconds()
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert timeout_seconds() == 2.5


def featvis_error():
    import featvis

    return featvis.FeatvisError

"""Ranks and the rendezvous from a launcher's environment (flanpipe.core.train.distributed), and the ranks per
node of the train rule (flanpipe.core.train.launch.ranks_per_node)."""

import shutil
import subprocess

import pytest

from flanpipe.core.train.distributed import PORT_BASE, dist_env, first_host, rendezvous_host
from flanpipe.core.train.launch import launch_command, ranks_per_node
from tests.slurm_cluster import install_slurm_commands

NODELISTS = ["gpu[017-020,031],login1", "node7", "rack[2-3]-gpu[08-09]", "fpn[1-2]",
             "n[009-011],m[1-2]", "x1,x[0-3]"]


@pytest.fixture(scope="module")
def scontrol() -> str:
    """Slurm's own `scontrol`, installed as the Slurm tests install it where it is missing. Those
    tests' rules hold: without root it skips, saying why, and in CI it fails instead."""
    install_slurm_commands()
    path = shutil.which("scontrol")
    assert path, "Slurm's packages are installed, but no scontrol is on PATH"
    return path


# A Slurm test (`-m slurm`): it runs in the Slurm tests' pytest, which installs Slurm, and not in the
# pytest beside it, which would find scontrol or not depending on how far the other had got.
@pytest.mark.slurm
@pytest.mark.parametrize("nodelist", NODELISTS)
def test_first_host_is_the_first_that_scontrol_expands(nodelist, scontrol, tmp_path, monkeypatch):
    # scontrol reads a config even to expand a list (a cluster's nodes have one); it contacts nobody
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=unit\nSlurmctldHost=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    expanded = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                              check=True, timeout=30).stdout.split()
    assert first_host(nodelist) == expanded[0]
    assert rendezvous_host(nodelist) == expanded[0]


def test_without_scontrol_the_own_parser_answers():
    assert rendezvous_host("rack[2-3]-gpu[08-09]", scontrol="/nonexistent") == "rack2-gpu08"
    assert rendezvous_host("gpu[4-5]", scontrol="false") == "gpu4"  # scontrol fails


def slurm_step(rank: int, nodes: list[str], per_node: int, job_id: str) -> dict[str, str]:
    """The variables srun gives task `rank` of a step of `per_node` tasks on each of `nodes`
    (block distribution), written out by hand."""
    return {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
            "SLURM_NTASKS": str(per_node * len(nodes)), "SLURM_NODEID": str(rank // per_node),
            "SLURMD_NODENAME": nodes[rank // per_node], "SLURM_JOB_ID": job_id,
            "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]",
            "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{len(nodes)})",
            "SLURM_NTASKS_PER_NODE": str(per_node)}


def test_every_rank_of_a_two_node_step_agrees_on_the_rendezvous():
    nodes, per_node = ["gpu07", "gpu08"], 2
    envs = [dist_env(slurm_step(r, nodes, per_node, job_id="123456")) for r in range(4)]
    assert [(d.rank, d.local_rank, d.node) for d in envs] == [
        (0, 0, "gpu07"), (1, 1, "gpu07"), (2, 0, "gpu08"), (3, 1, "gpu08")]
    assert {(d.master_addr, d.master_port, d.world_size, d.local_world_size, d.launcher) for d in envs} == {
        ("gpu07", PORT_BASE + 123456 % 20000, 4, 2, "srun")}


def test_a_rendezvous_in_the_environment_wins():
    env = {**slurm_step(1, ["gpu07", "gpu08"], 1, job_id="9"), "MASTER_ADDR": "10.0.0.5",
           "MASTER_PORT": "29400"}
    d = dist_env(env)
    assert (d.master_addr, d.master_port) == ("10.0.0.5", 29400)


def test_torchrun_variables_come_first():
    d = dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                  "MASTER_ADDR": "h0", "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (d.rank, d.world_size, d.master_addr, d.master_port, d.launcher) == (3, 4, "h0", 1234, "torchrun")


@pytest.mark.parametrize(("nodes", "tasks_per_node", "tasks", "expected"), [
    (1, 2, None, 2), (2, 8, None, 8), (2, 0, 2, 1), (2, 0, 4, 2), (3, 2, 6, 2)])
def test_ranks_per_node(nodes, tasks_per_node, tasks, expected):
    assert ranks_per_node(nodes, tasks_per_node, tasks) == expected
    cmd = launch_command("srun", nodes, expected, ["train"])
    assert cmd[:3] == ["srun", f"--nodes={nodes}", f"--ntasks-per-node={expected}"]


@pytest.mark.parametrize(("nodes", "tasks_per_node", "tasks", "message"), [
    (2, 0, 3, "resources.tasks 3 must be a multiple of resources.nodes 2"),
    (2, 2, 2, "resources.tasks_per_node 2 x nodes 2 != resources.tasks 2"),
    (1, 0, None, "resources.tasks_per_node 0; allowed"),
    (0, 2, None, "resources.nodes 0; allowed")])
def test_bad_rank_layouts_name_the_resource(nodes, tasks_per_node, tasks, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ranks_per_node(nodes, tasks_per_node, tasks)

"""Node-local owners priced by a hardware profile: ``run --owner-links`` and the simulator.

The plan keeps a block's refresh inside every node when computing it once
more per node is cheaper than sending its result across
(``runtime.plan.keeps_in_node``). The rates come from a profile, by one
function (``simulator.projection.owner_link_costs``) that the runtime's CLI
and the projection both call; a run records them, and its replay assigns
owners with them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from runtime.plan.ownership import LinkCosts
from simulator.model_config import load_model
from simulator.profiles import PROFILES_DIR, load_profile
from simulator.projection import Deployment, Efficiency, owner_link_costs, project
from tests.test_distributed import TINY, torchrun


def test_owner_link_costs_by_hand() -> None:
    profile = load_profile("h100-sxm")
    eff = Efficiency()
    assert profile.network.inter_node is not None
    nic = profile.network.inter_node.bandwidth.value
    host = owner_link_costs(profile, "host", ranks_per_node=8)
    assert host.flops_per_s == pytest.approx(profile.host.cpu_fp32_flops.value * eff.refresh_host)
    assert host.inter_node_bytes_per_s == pytest.approx(nic * 8 * eff.collective)
    device = owner_link_costs(profile, "device", ranks_per_node=4)
    assert device.flops_per_s == pytest.approx(profile.gpu.fp32_flops.value * eff.refresh_device)
    assert device.inter_node_bytes_per_s == pytest.approx(nic * 4 * eff.collective)


def test_a_profile_without_an_inter_node_network_prices_nothing() -> None:
    profile = load_profile("h100-sxm")
    alone = dataclasses.replace(
        profile, network=dataclasses.replace(profile.network, inter_node=None)
    )
    with pytest.raises(ValueError, match=r"no inter-node network \(\[network.inter_node\]\)"):
        owner_link_costs(alone)


def _slow_network(profile_name: str, bytes_per_s: float) -> str:
    """A copy of a packaged profile's text with a slower inter-node link."""
    text = (PROFILES_DIR / f"{profile_name}.toml").read_text(encoding="utf-8")
    slow, count = re.subn(
        r"(\[network\.inter_node\.bandwidth\]\nvalue = )[0-9.e+]+", rf"\g<1>{bytes_per_s:g}", text
    )
    assert count == 1
    return slow


def test_the_projection_keeps_blocks_in_node_when_the_network_is_slow(tmp_path: Path) -> None:
    """Every node refreshing every block: the busiest rank refreshes more than with one
    owner in the world, and exactly what one node's ranks would share alone."""
    shape = load_model("125m")
    fast = load_profile("h100-sxm")
    path = tmp_path / "slow.toml"
    path.write_text(_slow_network("h100-sxm", 1.0))
    slow = load_profile(path)
    common = dict(optimizer="soap", data_parallel="ddp", root_device="host")

    def refresh_ns(profile: object, nodes: int) -> int:
        deploy = Deployment(**common, nodes=nodes, gpus_per_node=2)  # type: ignore[arg-type]
        model = project(shape, profile, deploy).model  # type: ignore[arg-type]
        return sum(b.refresh_ns for b in model.blocks)

    one_owner = refresh_ns(fast, 4)  # 8 ranks share every block
    node_local = refresh_ns(slow, 4)  # every node's 2 ranks share every block
    assert node_local > one_owner
    assert node_local == refresh_ns(fast, 1)  # as if the node were alone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--owner-links", "nosuch"], "unknown hardware profile 'nosuch'"),
        (["--owner-links", "/proc/no/such/profile.toml"], "/proc/no/such/profile.toml"),
        (
            ["--owner-links", "h100-sxm", "--update-mode", "sharded"],
            "expected --update-mode replicated, got 'sharded'",
        ),
        (
            ["--owner-links", "h100-sxm", "--parallel", "fsdp2"],
            "expected --parallel ddp (under fsdp2 no result moves), got 'fsdp2'",
        ),
    ],
)
def test_owner_links_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from tests.cli_runner import refused_in_one_line

    out = tmp_path / "x"
    err = refused_in_one_line(["run", *args, "--out", str(out)], capsys)
    assert "--owner-links: " in err and message in err, err
    assert not out.exists()


@pytest.mark.slow
def test_a_run_keeps_every_block_in_its_node_and_its_replay_agrees(tmp_path: Path) -> None:
    """2 emulated nodes of one rank each, a network priced at 1 B/s: each node refreshes
    every block itself, so no result crosses nodes and every block installs at the
    within-node bound; the replay assigns the same owners from the recorded rates."""
    from simulator.multirank import Layout, assignment_of, calibrate
    from tests.cli_runner import run_cli
    from traces.io import read_trace

    profile = tmp_path / "slow.toml"
    profile.write_text(_slow_network("h100-sxm", 1.0))
    out = tmp_path / "run"
    proc = torchrun(
        2,
        "-m",
        "asteria_bench",
        "run",
        *TINY,
        "--optimizer",
        "shampoo",
        "--precondition-frequency",
        "2",
        "--staleness",
        "bounded:1",
        "--inter-node-staleness",
        "3",
        "--ranks-per-node",
        "1",
        "--owner-links",
        str(profile),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = owner_link_costs(load_profile(profile), "host", 1)
    traces = [read_trace(out), read_trace(out / "ranks" / "1")]
    refreshed = []
    for trace in traces:
        policies = trace.metadata.policies
        recorded = LinkCosts(
            float(policies["owner_links_flops_per_s"]),
            float(policies["owner_links_inter_node_bytes_per_s"]),
        )
        assert recorded == expected
        published = trace.spans[trace.spans["name"] == "publish"]
        assert published["detail"].str.endswith("(group intra)").all()  # none leaves its node
        taus = trace.counters[trace.counters["name"] == "staleness"]["value"]
        assert len(taus) > 0 and set(taus) == {1.0}  # nothing crosses: the intra bound
        refreshed.append(set(trace.spans[trace.spans["name"] == "refresh"]["block"]))
    assert refreshed[0] == refreshed[1] and refreshed[0]  # each node refreshes every block
    layout = Layout.of(traces[0])
    assert layout.links == expected
    assignment = assignment_of(calibrate(out), layout)
    assert assignment.node_local == frozenset(assignment.owners)
    assert run_cli(["replay", str(out)]) == 0

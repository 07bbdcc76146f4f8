"""Secrets stay in memory; the simulator's admin API answers only loopback clients.

The scan of the daemon's log and the audit database for the accounts' secrets after a full
fault run is in ``test_faults.py`` (lost responses, audit database outage).
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from .harness import Sim, guardbot, write_config


def non_loopback_address() -> str | None:
    """This host's address on its outbound interface (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_sim_admin_api_refuses_non_loopback_clients(tmp_path: Path) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 interface")
    with Sim(tmp_path, accounts=1, host="0.0.0.0") as sim:
        port = sim.rest_url.rsplit(":", 1)[1]
        outside = httpx.Client(base_url=f"http://{address}:{port}", timeout=5)
        with outside:
            state = outside.get("/sim/state")
            faults = outside.post("/sim/faults", json={"error_rate": 1})
            # The public Orderly API itself is served to everyone.
            public = outside.get("/v1/public/info")
        assert state.status_code == 403 and state.json()["code"] == -1002
        assert faults.status_code == 403
        assert public.status_code == 200
        assert sim.state()["faults"]["error_rate"] == 0  # the refused request changed nothing


@pytest.mark.slow
def test_config_readable_by_others_is_warned_and_the_secret_never_echoed(tmp_path: Path) -> None:
    with Sim(tmp_path, accounts=1) as sim:
        config = write_config(tmp_path, sim, f"sqlite:///{tmp_path / 'audit.db'}")
        secret = sim.secrets()[0]
        private = guardbot("check-config", "--config", str(config))
        config.chmod(0o644)
        shared = guardbot("check-config", "--config", str(config))
        broken = tmp_path / "broken.toml"
        broken.write_text(config.read_text().replace('account_id = "0x', 'account_id = "0y'))
        broken.chmod(0o600)
        refused = guardbot("check-config", "--config", str(broken))
    assert private.returncode == 0, private.stderr
    assert "readable by group or others" not in private.stderr
    assert shared.returncode == 0
    assert "readable by group or others" in shared.stderr
    assert "chmod 600" in shared.stderr  # the advice survives the log redaction
    assert refused.returncode != 0 and "account_id" in refused.stderr
    for run in (private, shared, refused):
        assert secret not in run.stdout + run.stderr

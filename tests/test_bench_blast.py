"""bench/blast.py, the capacity benchmark's paced generator, against both servers.

Not a benchmark (nothing here is timed): it checks that the generator speaks TURN to coturn and
to us, paces what it is asked to, and reports a loss the capacity search can trust - at a low
rate for half a second, where neither server may lose anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from servers import TurnTarget, coturn, secureconnect_turn, udp_echo_peer

BLAST = Path(__file__).resolve().parent.parent / "bench" / "blast.py"


@pytest.mark.parametrize("server", ["secureconnect", "secureconnect-workers", "coturn"])
def test_blast_relays_a_paced_load_without_loss(server: str, tmp_path: Path) -> None:
    """Three flows from three loopback addresses (two workers share them), half a second of 2,000
    round trips per second, every echo back, and round-trip samples from the stamped
    datagrams (one in 32)."""
    target: TurnTarget
    with ExitStack() as stack:
        peer_port = stack.enter_context(udp_echo_peer())
        if server == "coturn":
            target = stack.enter_context(coturn(tmp_path))
        else:
            workers = ["turn.workers=2"] if server == "secureconnect-workers" else []
            target = stack.enter_context(secureconnect_turn(tmp_path, *workers))
        done = subprocess.run(
            [
                sys.executable,
                str(BLAST),
                f"--port={target.port}",
                f"--secret={target.secret}",
                f"--peer-port={peer_port}",
                "--rate=2000",
                "--duration=0.5",
                "--flows=3",
                "--procs=2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["offered"] == 1000
    assert report["sent_share"] >= 0.9  # the pacer on a loaded 2-core machine
    assert report["received"] == report["sent"]
    assert report["loss_pct"] == 0.0
    assert len(report["worker_cores"]) == 2
    assert report["flows"] == 3
    assert report["rtt_samples"] >= report["received"] // 32 - 2  # one in 32 per process
    assert 0 < report["rtt_p50_ms"] <= report["rtt_p99_ms"] < 1000

"""The appliance launcher, re-exported under the name our tests and benchmarks import
(``from appliance import run_appliance``): its home is :mod:`secureconnect.launcher`."""

from secureconnect.launcher import (
    PYTHON_M,
    READY,
    AllInOnePorts,
    ApplianceNotReady,
    Running,
    appliance_env,
    free_port,
    run_appliance,
    stop_process,
    wait_for_line,
)

__all__ = [
    "PYTHON_M",
    "READY",
    "AllInOnePorts",
    "ApplianceNotReady",
    "Running",
    "appliance_env",
    "free_port",
    "run_appliance",
    "stop_process",
    "wait_for_line",
]

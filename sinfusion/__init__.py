"""SinFusion core: the network, noise schedules, sampling loops, bundles and clip reading; frame I/O
and the command-line convention in the torch-free `sinfusion.io`, the client's only door into the core.

Nothing here imports the trainer, the exporter, the server or the clients. Importing the package
itself is cheap: torch is only imported by the modules that need it (network, runtimes).
"""

import os

# OpenMP threads that spin while waiting turn a 0.2 s training step into 3-7 s as soon as another
# process wants the same cores (measured on the 2-core machines: docs/training.md). Sleeping waiters
# cost little when the machine is idle. Must be set before torch loads its OpenMP runtime; an explicit
# setting by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

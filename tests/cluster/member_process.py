"""A cluster member in a process of its own, so a test can SIGKILL it (no clean leave).

Usage: python -m tests.cluster.member_process HOSTS NODE ROOT SESSION_TIMEOUT_S
Prints one line per change of ownership: ``owned <count>``.
"""

from __future__ import annotations

import signal
import sys

from pumplink.cluster.membership import Member


def main() -> None:
    hosts, node, root, timeout = sys.argv[1:5]

    owned: set[int] = set()

    def acquired(p: int, _epoch: int) -> None:
        owned.add(p)
        print(f"owned {len(owned)}", flush=True)

    member = Member(hosts, node, f"http://{node}", root=root, session_timeout_s=float(timeout),
                    on_acquired=acquired, on_released=owned.discard)
    member.start()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()

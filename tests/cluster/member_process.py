"""A cluster member in a process of its own, so a test can SIGKILL it (no clean leave).

Usage: python -m tests.cluster.member_process HOSTS NODE ROOT SESSION_TIMEOUT_S [gevent]
Prints the kazoo handler's class name, then one line per partition taken: ``owned <count>``.
With ``gevent`` the process is monkey-patched first, as ``pumplink serve`` is.
"""

import sys

if sys.argv[5:6] == ["gevent"]:
    from gevent import monkey

    monkey.patch_all()

import threading  # noqa: E402

from pumplink.cluster.membership import Member  # noqa: E402


def main() -> None:
    hosts, node, root, timeout = sys.argv[1:5]
    owned: set[int] = set()

    def acquired(grants: dict[int, int]) -> None:
        for p in grants:
            owned.add(p)
            print(f"owned {len(owned)}", flush=True)

    member = Member(hosts, node, f"http://{node}", root=root, session_timeout_s=float(timeout),
                    on_acquired=acquired, on_released=owned.discard)
    print(type(member.client.handler).__name__, flush=True)
    member.start()
    threading.Event().wait()  # cooperative under gevent, where signal.pause() would block the hub


if __name__ == "__main__":
    main()

"""The ``pumplink`` command: serve, migrate, create-admin, create-site, add-member, simulate, demo."""

from gevent import monkey

# First, before peewee, psycopg2, paho or pykka are imported (docs/architecture.md, "Patch first").
monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402

import psycogreen.gevent  # noqa: E402

psycogreen.gevent.patch_psycopg()

from pumplink.config import ConfigError, load  # noqa: E402


def _serve(args) -> int:
    config = load()
    config.require_jwt_secret()
    config.require_cluster_settings()
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["pumplink serve", "-c", "python:pumplink.server.gunicorn"]
    WSGIApplication("%(prog)s").run()
    return 0


def _migrated_database(config):
    from pumplink.storage import migrations
    from pumplink.storage.db import OPERATIONAL_ERRORS, make_database

    db = make_database(config.database_url)
    try:
        applied = migrations.migrate(db)
    except OPERATIONAL_ERRORS as exc:
        # Name the setting to check rather than print a driver traceback.
        raise ConfigError(f"PUMPLINK_DATABASE_URL: cannot use the database: {str(exc).strip()}") from None
    return db, applied


def _migrate(args) -> int:
    _, applied = _migrated_database(load())
    print(f"migrations applied: {applied}" if applied else "the database is up to date")
    return 0


def _create_admin(args) -> int:
    from pumplink.accounts.service import Accounts
    from pumplink.clock import Clock
    from pumplink.errors import PumpLinkError

    config = load()
    password = _admin_password(args)
    if password is None:
        return 2
    db, _ = _migrated_database(config)
    try:
        with db.connection_context():
            user = Accounts(config, Clock()).ensure_admin(args.email, password)
    except PumpLinkError as exc:  # a bad email or password: say which, no traceback
        print(f"pumplink create-admin: {exc.message}", file=sys.stderr)
        return 2
    print(f"admin {user.email} (id {user.id}) is ready")
    return 0


def _admin_password(args) -> str | None:
    """The password from --password, from stdin (--password-stdin or --password -), or asked for.

    On the command line it would show in `ps` and the shell's history; stdin and the prompt
    keep it out of both."""
    import getpass

    if args.password_stdin or args.password == "-":
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        try:
            password = getpass.getpass("Password for the admin: ")
            again = getpass.getpass("The same password again: ")
        except EOFError:  # Ctrl-D at the prompt
            print("", file=sys.stderr)
            return None
        if again != password:
            print("pumplink create-admin: the two passwords differ", file=sys.stderr)
            return None
    else:
        print("pumplink create-admin: no password: give --password-stdin (and pipe it in) "
              "or run it in a terminal to be asked", file=sys.stderr)
        return None
    if not password:
        print("pumplink create-admin: the password is empty", file=sys.stderr)
        return None
    return password


def _device_credentials(args) -> int:
    from pathlib import Path

    from pumplink.devices import broker_credentials as brokerauth

    config = load()
    user = brokerauth.username(args.device_id)
    password = args.password or brokerauth.new_password()
    line = brokerauth.password_line(user, password)
    stanza = brokerauth.acl_stanza(args.device_id, config.mqtt_prefix)
    if args.password_file:
        brokerauth.upsert_password(Path(args.password_file), user, line)
    if args.acl_file:
        brokerauth.upsert_acl(Path(args.acl_file), user, stanza)
    print(f"# broker login for device {args.device_id}: put these in the controller's firmware")
    print(f"username: {user}\npassword: {password}\n")
    print(f"# Mosquitto password file line{' (written to ' + args.password_file + ')' if args.password_file else ''}:")
    print(line + "\n")
    print(f"# Mosquitto ACL{' (written to ' + args.acl_file + ')' if args.acl_file else ''}:")
    print(stanza)
    if args.password_file or args.acl_file:
        print("\n# reload Mosquitto to apply: kill -HUP $(pidof mosquitto)")
    return 0


def _create_site(args) -> int:
    import json

    from pumplink.errors import PumpLinkError
    from pumplink.sites import members
    from pumplink.storage import models as m

    db, _ = _migrated_database(load())
    try:
        with db.connection_context(), db.atomic():
            site = members.create_site(args.name)
            m.AuditLog.create(action="site.create", target=f"site:{site.id}", site=site.id,
                              detail=json.dumps({"name": site.name, "by": "cli"}))
    except PumpLinkError as exc:
        print(f"pumplink create-site: {exc.message}", file=sys.stderr)
        return 2
    print(f"site {site.name!r} (id {site.id}) is ready")
    return 0


def _add_member(args) -> int:
    import json

    from pumplink.errors import PumpLinkError
    from pumplink.sites import members
    from pumplink.storage import models as m

    db, _ = _migrated_database(load())
    try:
        with db.connection_context(), db.atomic():
            where = m.Site.id == int(args.site) if args.site.isdigit() else m.Site.name == args.site
            site = m.Site.get_or_none(where)
            if site is None:
                print(f"pumplink add-member: there is no site {args.site!r}", file=sys.stderr)
                return 2
            user, new = members.add_by_email(site.id, args.email, args.role)
            m.AuditLog.create(action="member.add" if new else "member.update", target=f"user:{user.id}",
                              site=site.id, detail=json.dumps({"role": args.role, "by": "cli"}))
    except PumpLinkError as exc:
        print(f"pumplink add-member: {exc.message}", file=sys.stderr)
        return 2
    # A running server reads memberships again within PUMPLINK_WS_ROLE_RECHECK_S for its live feed.
    print(f"{user.email} is {'now' if new else 'still'} a member of {site.name!r} as {args.role}")
    return 0


def _simulate(args) -> int:
    from pumplink.devices.simulator import run_simulator

    return run_simulator(load(), args)


def _demo(args) -> int:
    from pumplink.server.demo import run_demo

    return run_demo(args)


def _cluster_status(args) -> int:
    import json

    from kazoo.client import KazooClient

    from pumplink.cluster.membership import cluster_map
    from pumplink.cluster.node import split_hosts

    config = load()
    if not config.clustered:
        raise ConfigError("PUMPLINK_ZOOKEEPER: not set; this installation runs as a single node")
    hosts, root = split_hosts(config.zookeeper)
    client = KazooClient(hosts=hosts, timeout=config.zk_session_timeout_s)
    try:
        client.start(timeout=10)
    except Exception as exc:  # noqa: BLE001 - kazoo's timeout, or a bad host
        raise ConfigError(f"PUMPLINK_ZOOKEEPER: cannot reach ZooKeeper at {hosts}: {exc}") from None
    try:
        found = cluster_map(client, root)
    finally:
        client.stop()
        client.close()
    if args.json:
        print(json.dumps({"members": found["members"], "owners": {str(p): o for p, o in found["owners"].items()},
                          "nodes": {n: {"address": v["address"], "partitions": {str(p): e for p, e in
                                                                                 v["partitions"].items()}}
                                    for n, v in found["nodes"].items()}}, indent=2))
        return 0
    print(f"{len(found['members'])} member(s) under {root}")
    for name, node in sorted(found["nodes"].items()):
        parts = sorted(node["partitions"])
        print(f"  {name}  {node['address'] or '(not a member: leaving or expiring)'}  {len(parts)} partition(s): "
              f"{' '.join(map(str, parts))}")
    orphans = sorted(p for p, owner in found["owners"].items() if owner is None)
    if orphans:
        print(f"  no owner ({len(orphans)}): {' '.join(map(str, orphans))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pumplink", description="Safe, remotely controlled, scheduled pumps.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server (gunicorn + gevent, one worker)").set_defaults(func=_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    admin = sub.add_parser("create-admin", help="create an admin account (or make one an admin)")
    admin.add_argument("--email", required=True)
    given = admin.add_mutually_exclusive_group()
    given.add_argument("--password", help="the password ('-' reads it from stdin); omit it to be asked")
    given.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    admin.set_defaults(func=_create_admin)
    creds = sub.add_parser("device-credentials", help="print (and optionally write) a controller's broker login")
    creds.add_argument("device_id", type=int)
    creds.add_argument("--password", help="use this password instead of a generated one")
    creds.add_argument("--password-file", help="add or replace the line in this Mosquitto password file")
    creds.add_argument("--acl-file", help="add or replace the stanza in this Mosquitto ACL file")
    creds.set_defaults(func=_device_credentials)
    site = sub.add_parser("create-site", help="create a site (a farm, a village scheme)")
    site.add_argument("name")
    site.set_defaults(func=_create_site)
    member = sub.add_parser("add-member", help="make an existing account a member of a site, or change its role")
    member.add_argument("--site", required=True, help="the site's id or name")
    member.add_argument("--email", required=True)
    member.add_argument("--role", choices=("viewer", "operator", "manager"), default="operator")
    member.set_defaults(func=_add_member)
    sim = sub.add_parser("simulate", help="simulated pump controllers speaking the MQTT protocol")
    sim.add_argument("--devices", type=int, default=1, help="how many controllers (ids 1..N)")
    sim.add_argument("--ids", help="comma-separated device ids instead of 1..N")
    sim.add_argument("--ack-delay", type=float, default=0.0, help="seconds before each ack")
    sim.add_argument("--no-ack", action="store_true", help="never acknowledge commands")
    sim.add_argument("--legacy", action="store_true", help="speak the plain-text legacy protocol")
    sim.set_defaults(func=_simulate)
    cluster = sub.add_parser("cluster", help="cluster mode (PUMPLINK_ZOOKEEPER)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cluster_sub.add_parser("status", help="print the members and who owns which partition, from ZooKeeper")
    status.add_argument("--json", action="store_true", help="as JSON")
    status.set_defaults(func=_cluster_status)
    demo = sub.add_parser("demo", help="broker, database, server and simulated pumps in one command")
    demo.add_argument("--devices", type=int, default=3)
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"pumplink: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())




"""The shipped broker ACL: controller 2 cannot speak for controller 1, nor hear its commands."""

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pumplink.devices.simulator import SimulatedPump
from tests.conftest import World
from tests.support import PUMPLINK_BIN, free_port, wait_until

CONF = Path(__file__).resolve().parents[2] / "conf" / "mosquitto"


def credentials(device_id: int, prefix: str, passwd: Path, acl: Path) -> str:
    env = {**os.environ, "PUMPLINK_MQTT_PREFIX": prefix}
    out = subprocess.run([PUMPLINK_BIN, "device-credentials", str(device_id), "--password-file", str(passwd),
                          "--acl-file", str(acl)], env=env, capture_output=True, text=True, check=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("password: "))


@pytest.fixture
def secured_broker(tmp_path):
    prefix = f"plsec-{secrets.token_hex(4)}"
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    server_pw = secrets.token_urlsafe(12)
    from pumplink.devices import broker_credentials as brokerauth

    brokerauth.upsert_password(passwd, "pumplink-server", brokerauth.password_line("pumplink-server", server_pw))
    brokerauth.upsert_acl(acl, "pumplink-server", brokerauth.server_acl("pumplink-server", prefix, f"{prefix}-legacy"))
    device_pw = {d: credentials(d, prefix, passwd, acl) for d in (1, 2)}
    port = free_port()
    # The shipped example, with this test's port and files.
    conf = (CONF / "mosquitto.conf.example").read_text()
    conf = conf.replace("/etc/mosquitto/pumplink.passwd", str(passwd)).replace("/etc/mosquitto/pumplink.acl", str(acl))
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1").replace("persistence true", "persistence false")
    # Run as root, mosquitto would switch to its own user, which cannot read pytest's private tmp dir.
    conf += "\nuser root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "secured broker did not start"
            time.sleep(0.05)
    yield {"port": port, "prefix": prefix, "server_pw": server_pw, "device_pw": device_pw}
    proc.terminate()
    proc.wait(5)


def client(port, user=None, password=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if user:
        c.username_pw_set(user, password)
    codes = []
    c.on_connect = lambda cl, ud, fl, rc, pr=None: codes.append(rc)
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 3
    while not codes and time.monotonic() < deadline:
        time.sleep(0.02)
    return c, codes


def test_controller_2_cannot_publish_or_listen_as_controller_1(secured_broker, server_factory):
    b = secured_broker
    port, prefix = b["port"], b["prefix"]
    _, codes = client(port)
    assert codes and codes[0].is_failure, "anonymous clients are refused"

    server = server_factory(PUMPLINK_MQTT_URL=f"mqtt://pumplink-server:{b['server_pw']}@127.0.0.1:{port}",
                            PUMPLINK_MQTT_PREFIX=prefix)
    server.prefix = prefix
    world = World(server)
    try:
        assert world.device("Second") == 2
        url1 = f"mqtt://device-1:{b['device_pw'][1]}@127.0.0.1:{port}"
        pump1 = SimulatedPump(url1, prefix, 1).start()
        world.pumps.append(pump1)
        admin = world.admin
        wait_until(lambda: admin.get("devices/1").json()["state"] == "off", what="device 1 online and off")

        intruder, codes = client(port, "device-2", b["device_pw"][2])
        assert codes and not codes[0].is_failure
        heard = []
        intruder.on_message = lambda c, u, msg: heard.append(msg.topic)
        intruder.subscribe(f"{prefix}/devices/1/command", qos=1)
        intruder.publish(f"{prefix}/devices/1/state", '{"state": "on", "reason": "manual"}', qos=1, retain=True).wait_for_publish(3)
        intruder.publish(f"{prefix}/devices/1/availability", "offline", qos=1, retain=True).wait_for_publish(3)
        # Its own topics do get through: the positive control for the two forgeries above.
        intruder.publish(f"{prefix}/devices/2/state", '{"state": "on", "reason": "manual"}', qos=1, retain=True).wait_for_publish(3)
        wait_until(lambda: admin.get("devices/2").json()["state"] == "on", what="device 2's own report accepted")
        assert admin.get("devices/1").json()["state"] == "off", "the forged report for device 1 was dropped"

        # A command for device 1 reaches device 1 and not the intruder.
        user = world.user()
        r = user.post("activate", {"device_id": 1, "duration_s": 1})
        assert r.status_code == 202
        pump1.wait_for(lambda p: p.commands, what="device 1 got its command")
        assert heard == [], f"device 2 heard {heard}"
        intruder.loop_stop()
        intruder.disconnect()
    finally:
        world.close()

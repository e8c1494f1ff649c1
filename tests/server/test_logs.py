import json
import logging

from pumplink.logs import JsonFormatter


def test_json_lines_carry_the_structured_fields():
    record = logging.LogRecord("pumplink.devices.actor", logging.INFO, __file__, 1, "device %s state %s", (3, "on"),
                               None)
    record.device_id, record.state, record.activation_id = 3, "on", 7
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "device 3 state on"
    assert (line["device_id"], line["state"], line["activation_id"], line["level"]) == (3, "on", 7, "INFO")
    assert line["at"].endswith("Z")

"""The outbox's coalescing and the debouncer, as pure logic."""

from pumplink.live.debounce import CALM_S, Debouncer
from pumplink.live.outbox import Empty, Outbox, with_skipped


def frame(device_id, n):
    return f'{{"type":"device.state","id":{n},"device_id":{device_id},"skipped":0}}'


def test_a_newer_state_replaces_the_waiting_one_and_moves_to_the_end():
    box = Outbox(3)
    assert box.put(frame(1, 1), ("state", 1))
    assert box.put("activation 2")
    assert box.put(frame(1, 3), ("state", 1))
    assert box.put(frame(1, 4), ("state", 1))
    assert len(box) == 2
    assert box.get(0) == "activation 2"
    assert box.get(0) == '{"type":"device.state","id":4,"device_id":1,"skipped":2}'
    try:
        box.get(0)
    except Empty:
        pass
    else:
        raise AssertionError("the outbox should be empty")


def test_a_replaced_frame_that_stood_for_several_changes_passes_its_count_on():
    box = Outbox(3)
    box.put('{"id":5,"skipped":3}', ("state", 1))
    box.put('{"id":6,"skipped":0}', ("state", 1))
    assert box.get(0) == '{"id":6,"skipped":4}'


def test_a_full_outbox_refuses_new_entries_but_not_replacements():
    box = Outbox(2)
    assert box.put("a") and box.put(frame(2, 1), ("state", 2))
    assert not box.put("b")
    assert box.put(frame(2, 2), ("state", 2))


def test_skipped_adds_to_a_count_already_there_and_leaves_text_frames_alone():
    assert with_skipped('{"id":1,"skipped":3}', 2) == '{"id":1,"skipped":5}'
    assert with_skipped("on", 4) == "on"


def test_debouncer_flags_beyond_the_limit_holds_the_latest_and_clears_when_calm():
    d = Debouncer(3)
    sent = [d.offer(7, n, 0.01 * n)[0] for n in range(3)]
    assert sent == [0, 1, 2]
    event, flagged = d.offer(7, 3, 0.03)
    assert event is None and flagged and d.flapping() == 1
    assert d.offer(7, 4, 0.04) == (None, False)
    assert d.flush(7, 0.3) == (4, 2, True)
    assert d.flush(7, 0.6) == (None, 0, True)
    assert d.flush(7, 0.04 + CALM_S) == (None, 0, False)
    assert d.flapping() == 0
    assert d.offer(7, 5, 5.0) == (5, False)

"""docs/erd.md is the diagram of the models as they are."""

from pathlib import Path

from pumplink.storage import erd

DOC = Path(__file__).resolve().parents[2] / "docs" / "erd.md"


def test_the_diagram_matches_the_models():
    assert DOC.read_text() == erd.document(), "models changed: run python -m pumplink.storage.erd > docs/erd.md"


def test_every_table_and_reference_is_drawn():
    text = erd.mermaid()
    for table in ("user", "device", "activation", "session", "device_log", "schedule", "schedule_run"):
        assert f"    {table} {{" in text
    assert 'device ||--o{ session : "device_id"' in text
    assert 'user |o--o{ activation : "user_id"' in text
